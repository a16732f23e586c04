"""Property tests of the request parsers: whatever arrives, the answer is a client error.

The form decoder, the JSON body decoder, the no-repeats collector and the Basic credentials
decoder are fed arbitrary bytes and strings; they may only refuse with InvalidRequest or
InvalidClient (a 4xx), never raise anything that would become a 500. Round trips hold, and a
repeated parameter name is always refused.
"""

from __future__ import annotations

import base64
import json
from urllib.parse import quote_plus, urlencode

import pytest
from hypothesis import given, settings, strategies as st

from tokensvc.clientauth import _basic
from tokensvc.errors import InvalidClient, InvalidRequest
from tokensvc.http.params import _json_pairs, collect, parse_form

FUZZ = settings(max_examples=150, deadline=None, database=None)
# Text that UTF-8 can carry: every character but lone surrogates.
UTF8_CHARS = st.characters(exclude_categories=["Cs"])
TEXT = st.text(UTF8_CHARS, max_size=20)
NAMES = st.text(UTF8_CHARS, min_size=1, max_size=12)
# Bodies that look like forms often enough to reach the decoder's corners.
FORMISH = st.lists(st.sampled_from([b"a", b"=", b"&", b"%", b"%2", b"%41", b"%ff", b"%ED%A0%80",
                                    b"+", b";", b"\xff", b"\xc3\xa9", b"\x00", b"client_id"]),
                   max_size=12).map(b"".join)
JSONISH = st.lists(st.sampled_from([b"{", b"}", b"[", b"]", b'"a"', b'"\\ud800"', b":", b",",
                                    b"null", b"1", b"1e999", b'"scope"', b'["x"]', b"\xff",
                                    b"\xfe\xff", b" "]), max_size=14).map(b"".join)


def pairs_of(params: dict[str, str]) -> list[tuple[str, str]]:
    return list(params.items())


@FUZZ
@given(st.one_of(st.binary(max_size=64), FORMISH))
def test_form_bodies_only_ever_raise_invalid_request(body: bytes) -> None:
    try:
        pairs = parse_form(body)
        params = collect(pairs)
    except InvalidRequest:
        return
    assert all(isinstance(n, str) and isinstance(v, str) for n, v in pairs)
    assert all(v != "" for v in params.values())


@FUZZ
@given(st.dictionaries(NAMES, TEXT, max_size=6))
def test_urlencoded_pairs_come_back(params: dict[str, str]) -> None:
    body = urlencode(pairs_of(params)).encode("ascii")
    assert parse_form(body) == pairs_of(params)
    assert collect(parse_form(body)) == {n: v for n, v in params.items() if v != ""}


@FUZZ
@given(st.dictionaries(NAMES, TEXT, min_size=1, max_size=5), st.data())
def test_repeated_form_names_are_always_refused(params: dict[str, str], data: st.DataObject) -> None:
    pairs = pairs_of(params)
    name = data.draw(st.sampled_from(sorted(params)))
    again = data.draw(TEXT)
    at = data.draw(st.integers(0, len(pairs)))
    pairs.insert(at, (name, again))
    with pytest.raises(InvalidRequest, match="more than once"):
        collect(pairs)
    with pytest.raises(InvalidRequest, match="more than once"):
        collect(parse_form(urlencode(pairs).encode("ascii")))


@FUZZ
@given(st.one_of(st.binary(max_size=64), JSONISH, TEXT.map(lambda t: t.encode("utf-8"))))
def test_json_bodies_only_ever_raise_invalid_request(body: bytes) -> None:
    try:
        pairs = _json_pairs(body)
    except InvalidRequest:
        return
    for name, value in pairs:
        name.encode("utf-8")  # never a lone surrogate
        value.encode("utf-8")


@FUZZ
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                    max_leaves=10))
def test_any_json_document_is_a_client_error_or_pairs(doc: object) -> None:
    try:
        _json_pairs(json.dumps(doc).encode())
    except InvalidRequest:
        pass


@FUZZ
@given(st.dictionaries(NAMES, TEXT, max_size=6))
def test_json_objects_of_strings_come_back(params: dict[str, str]) -> None:
    assert _json_pairs(json.dumps(params).encode()) == pairs_of(params)


@FUZZ
@given(st.dictionaries(NAMES, TEXT, min_size=1, max_size=5), st.data())
def test_repeated_json_names_are_always_refused(params: dict[str, str], data: st.DataObject) -> None:
    members = [f"{json.dumps(n)}:{json.dumps(v)}" for n, v in params.items()]
    name = data.draw(st.sampled_from(sorted(params)))
    value = data.draw(st.one_of(st.none(), TEXT))
    members.insert(data.draw(st.integers(0, len(members))), f"{json.dumps(name)}:{json.dumps(value)}")
    with pytest.raises(InvalidRequest, match="more than once"):
        _json_pairs(("{" + ",".join(members) + "}").encode())


@FUZZ
@given(st.one_of(st.text(max_size=40), st.binary(max_size=40).map(
    lambda b: base64.b64encode(b).decode("ascii"))))
def test_basic_headers_only_ever_raise_invalid_client(payload: str) -> None:
    try:
        client_id, secret = _basic("Basic " + payload)
    except InvalidClient as exc:
        assert exc.headers == {"WWW-Authenticate": 'Basic realm="tokensvc"'}
        return
    assert client_id != ""
    assert isinstance(secret, str)


@FUZZ
@given(NAMES, TEXT)
def test_form_encoded_basic_credentials_come_back(client_id: str, secret: str) -> None:
    raw = f"{quote_plus(client_id, safe='')}:{quote_plus(secret, safe='')}".encode("ascii")
    header = "Basic " + base64.b64encode(raw).decode("ascii")
    assert _basic(header) == (client_id, secret)
