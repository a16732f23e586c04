"""Request parameters: form-urlencoded (RFC 6749) or JSON (OmniFund), size-limited, no repeats.

The body is parsed with `parse_qsl` on the raw bytes rather than Starlette's multipart-capable
form parser: it is cheaper on the hot path and shows repeated parameters, which RFC 6749 §3.1
and §3.2 forbid ("Request and response parameters MUST NOT be included more than once").
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.requests import Request

from tokensvc.errors import (
    InvalidRequest,
    InvalidTarget,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)

Params = dict[str, str]
# RFC 8707 §2: `resource` may be sent once per resource server, the one repeatable parameter
# of the token endpoint.
TOKEN_LISTS = frozenset({"resource"})


def collect(pairs: Iterable[tuple[str, str]], lists: frozenset[str] = frozenset()) -> Params:
    """Gather pairs, refusing a repeated name (RFC 6749 §3.1, §3.2: parameters "MUST NOT be
    included more than once"); empty values count as omitted. The one exception is a name the
    caller declares a list (an HTML form's checkboxes): its values are joined by spaces, as
    OAuth writes lists."""
    seen: set[str] = set()
    out: Params = {}
    for name, value in pairs:
        if name in seen and name not in lists:
            raise InvalidRequest(f"The parameter '{name}' was sent more than once.")
        seen.add(name)
        if value != "":
            out[name] = f"{out[name]} {value}" if name in out else value
    return out


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for name, value in pairs:
        if name in seen:
            raise InvalidRequest(f"The parameter '{name}' was sent more than once.")
        seen[name] = value
    return seen


def json_object(body: bytes) -> dict[str, Any]:
    """A JSON object body, refusing a repeated member as a repeated form parameter is refused."""
    try:
        doc = json.loads(body, object_pairs_hook=_no_repeats)
    except (ValueError, RecursionError):
        raise InvalidRequest("The body is not valid JSON.") from None
    if not isinstance(doc, dict):
        raise InvalidRequest("The JSON body must be an object.")
    try:
        orjson.dumps(doc)  # `\ud800` escapes decode to lone surrogates, which nothing can store
    except orjson.JSONEncodeError:
        raise InvalidRequest("The JSON body holds a string that is not valid Unicode.") from None
    return doc


def _json_pairs(body: bytes, lists: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    doc = json_object(body)
    pairs: list[tuple[str, str]] = []
    for name, value in doc.items():
        if value is None:
            _utf8(name)
            continue
        if isinstance(value, list) and name == "scope" and all(isinstance(v, str) for v in value):
            value = " ".join(value)
        if isinstance(value, list) and name in lists and all(isinstance(v, str) for v in value):
            _utf8(name)
            for item in value:
                _utf8(item)
                pairs.append((name, item))
            continue
        _utf8(name)
        if not isinstance(value, str):
            raise InvalidRequest(f"The parameter '{name}' must be a string.")
        _utf8(value)
        pairs.append((name, value))
    return pairs


def _utf8(text: str) -> None:
    """JSON's `\\ud800` escapes decode to lone surrogates, which no UTF-8 consumer accepts."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest("The JSON body holds a string that is not valid Unicode.") from None


def parse_form(body: bytes) -> list[tuple[str, str]]:
    """RFC 6749 appendix B form decoding; malformed UTF-8 is a client error, not a crash."""
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False,
                         errors="strict")
    except UnicodeDecodeError:
        raise InvalidRequest("The form body is not valid UTF-8 percent-encoding.") from None


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed the limit (`max_body_size`),
    and with 408 when it has not arrived in full within `timeout` (`request_timeout`).

    uvicorn bounds the idle time between requests on a connection (timeout_keep_alive), not the
    time a request body takes to arrive: without this, a client that sends headers and then a
    body that never completes holds a connection and a task for as long as it likes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidRequest("The Content-Length header is malformed.")
        if int(declared) > limit:
            raise PayloadTooLarge(f"The body exceeds {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    seconds = timeout
    try:
        async with asyncio.timeout(seconds):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"The body exceeds {limit} bytes.")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(f"The body did not arrive within {seconds:g} seconds.") from None
    return b"".join(chunks)


FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_document(request: Request, limit: int, timeout: float, *, form: bool,
                        lists: frozenset[str] = frozenset(), empty_json: bool = True) -> dict[str, Any]:
    """The one reader of document bodies (admin API, registration, console forms): a JSON
    object, or with `form` a urlencoded form, with one rule for repeated fields (refused, but
    for the names in `lists`). An empty body is an empty document (unless `empty_json` is off:
    RFC 7591 wants a JSON object); 413, 408 as read_body; 415 for any other media type."""
    body = await read_body(request, limit, timeout)
    ctype = media_type(request)
    if ctype == JSON or (not form and ctype == "" and body):
        doc: dict[str, Any] = json_object(body) if body.strip() or not empty_json else {}
        return doc
    if form and ctype == FORM:
        return dict(collect(parse_form(body), lists))
    if not body:
        return {}
    raise UnsupportedMediaType("Send application/x-www-form-urlencoded or application/json."
                               if form else "Send application/json.")


async def read_params(request: Request, limit: int, timeout: float,
                      lists: frozenset[str] = frozenset()) -> Params:
    """The body's parameters; 415 for other media types, 413 beyond the limit, 408 too slow.
    The names in `lists` (a subset of TOKEN_LISTS) may repeat; their values are joined."""
    body = await read_body(request, limit, timeout)
    ctype = media_type(request)
    if ctype == FORM:
        pairs = parse_form(body)
    elif ctype == JSON:
        pairs = _json_pairs(body, lists) if body.strip() else []
    elif not body:
        pairs = []
    else:
        raise UnsupportedMediaType(
            "Send application/x-www-form-urlencoded or application/json.")
    params = collect(pairs, lists)
    if "resource" in lists and "resource" in params:
        # The values are joined by spaces, as OAuth writes lists; no URI holds a space, so a
        # value that does is malformed, not two resources.
        for name, value in pairs:
            if name == "resource" and " " in value:
                raise InvalidTarget(f"The resource {value[:100]!r} is not an absolute URI (RFC 8707 §2).")
    return params
