"""The token endpoint's request handling and response shape (API.md "Conventions", "Grants")."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import redis

from tests.support.api import introspect, new_client, new_user
from tests.support.apps import ON_SINGLE_AND_CLUSTER, AppFactory
from tests.support.assertions import assert_error, assert_tokens
from tests.support.config import ADMIN
from tests.support.stored import grant_of, token_key, token_keys
from tokensvc.store import keys

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
BASIC = 'Basic realm="tokensvc"'

Client = dict[str, Any]
# A request built for a given client: (body bytes, content type or None).
Build = Callable[[Client], tuple[bytes, str | None]]

pytestmark = ON_SINGLE_AND_CLUSTER


def creds(client: Client) -> dict[str, str]:
    return {"client_id": client["client_id"], "client_secret": client["client_secret"]}


def form(client: Client, **params: str) -> tuple[bytes, str | None]:
    return urlencode({**params, **creds(client)}).encode(), FORM


def as_json(client: Client, **params: object) -> tuple[bytes, str | None]:
    return json.dumps({**params, **creds(client)}).encode(), JSON


async def post(http: httpx.AsyncClient, body: bytes, ctype: str | None,
               path: str = "/oauth/token") -> httpx.Response:
    headers = {} if ctype is None else {"Content-Type": ctype}
    return await http.post(path, content=body, headers=headers)


# -- body encodings -------------------------------------------------------------------------

ENCODINGS: list[tuple[str, Build]] = [
    ("form", lambda c: form(c, grant_type="client_credentials", scope="read")),
    ("form-charset", lambda c: (form(c, grant_type="client_credentials", scope="read")[0],
                                "application/x-www-form-urlencoded; charset=UTF-8")),
    ("form-uppercase-type", lambda c: (form(c, grant_type="client_credentials", scope="read")[0],
                                       "Application/X-WWW-Form-URLEncoded")),
    ("form-plus-and-percent", lambda c: (
        b"grant_type=client_credentials&scope=%72ea%64&" + urlencode(creds(c)).encode(), FORM)),
    ("json", lambda c: as_json(c, grant_type="client_credentials", scope="read")),
    ("json-charset", lambda c: (as_json(c, grant_type="client_credentials", scope="read")[0],
                                "application/json; charset=utf-8")),
    ("json-scope-list", lambda c: as_json(c, grant_type="client_credentials", scope=["read"])),
    ("json-null-is-omitted", lambda c: as_json(c, grant_type="client_credentials", scope="read",
                                               username=None)),
]


@pytest.mark.parametrize("build", [b for _, b in ENCODINGS], ids=[i for i, _ in ENCODINGS])
async def test_form_and_json_bodies_both_issue_tokens(http: httpx.AsyncClient, client: Client,
                                                      build: Build) -> None:
    body, ctype = build(client)
    resp = await post(http, body, ctype)
    assert_tokens(resp, expires_in=3600, scope="read", refresh=False)


PASSWORD_ENCODINGS: list[tuple[str, Build]] = [
    ("form", lambda c: form(c, grant_type="password", username="alice", password="correct horse")),
    ("json", lambda c: as_json(c, grant_type="password", username="alice", password="correct horse")),
]


@pytest.mark.parametrize("build", [b for _, b in PASSWORD_ENCODINGS],
                         ids=[i for i, _ in PASSWORD_ENCODINGS])
async def test_password_grant_in_both_encodings(http: httpx.AsyncClient, client: Client,
                                                build: Build) -> None:
    body, ctype = build(client)
    tokens = assert_tokens(await post(http, body, ctype), expires_in=3600, scope="read write",
                           refresh=True)
    refresh_body = (json.dumps({"grant_type": "refresh_token",
                                "refresh_token": tokens["refresh_token"], **creds(client)}).encode()
                    if ctype == JSON else
                    form(client, grant_type="refresh_token", refresh_token=tokens["refresh_token"])[0])
    assert_tokens(await post(http, refresh_body, ctype), expires_in=3600, scope="read write",
                  refresh=True)


# -- request errors -------------------------------------------------------------------------

def _raw_form(client: Client, raw: bytes) -> tuple[bytes, str | None]:
    return raw + b"&" + urlencode(creds(client)).encode(), FORM


def _raw_json(client: Client, members: str) -> tuple[bytes, str | None]:
    return ("{" + members + f', "client_id": "{client["client_id"]}", '
            f'"client_secret": "{client["client_secret"]}"}}').encode(), JSON


REPEATED = "The parameter '{}' was sent more than once."
MALFORMED_FORM = "The form body is not valid UTF-8 percent-encoding."
BAD_JSON = "The body is not valid JSON."
NOT_UTF8_JSON = "The JSON body holds a string that is not valid Unicode."
MEDIA = "Send application/x-www-form-urlencoded or application/json."

# id, request, status, error, description
ERRORS: list[tuple[str, Build, int, str, str]] = [
    ("form-repeated-grant_type",
     lambda c: _raw_form(c, b"grant_type=client_credentials&grant_type=client_credentials"),
     400, "invalid_request", REPEATED.format("grant_type")),
    ("form-repeated-scope-one-empty",
     lambda c: _raw_form(c, b"grant_type=client_credentials&scope=&scope=read"),
     400, "invalid_request", REPEATED.format("scope")),
    ("form-repeated-client_id",
     lambda c: (b"grant_type=client_credentials&" + urlencode(creds(c)).encode()
                + b"&client_id=" + c["client_id"].encode(), FORM),
     400, "invalid_request", REPEATED.format("client_id")),
    ("json-duplicate-key",
     lambda c: _raw_json(c, '"grant_type": "client_credentials", "grant_type": "password"'),
     400, "invalid_request", REPEATED.format("grant_type")),
    ("json-duplicate-key-same-value",
     lambda c: _raw_json(c, '"grant_type": "client_credentials", "scope": "read", "scope": "read"'),
     400, "invalid_request", REPEATED.format("scope")),
    ("form-missing-grant_type", lambda c: form(c, scope="read"),
     400, "invalid_request", "grant_type is required."),
    ("form-empty-grant_type", lambda c: form(c, grant_type=""),
     400, "invalid_request", "grant_type is required."),
    ("json-missing-grant_type", lambda c: as_json(c, scope="read"),
     400, "invalid_request", "grant_type is required."),
    ("empty-body-no-type", lambda c: (b"", None), 400, "invalid_request", "grant_type is required."),
    ("unknown-grant_type", lambda c: form(c, grant_type="urn:example:magic"),
     400, "unsupported_grant_type", "The grant_type 'urn:example:magic' is not supported."),
    ("grant_type-is-case-sensitive", lambda c: form(c, grant_type="Client_Credentials"),
     400, "unsupported_grant_type", "The grant_type 'Client_Credentials' is not supported."),
    ("long-unknown-grant_type-is-cut", lambda c: form(c, grant_type="x" * 500),
     400, "unsupported_grant_type", f"The grant_type '{'x' * 64}' is not supported."),
    ("password-without-password", lambda c: form(c, grant_type="password", username="alice"),
     400, "invalid_request", "username and password are required."),
    ("refresh-without-refresh_token", lambda c: form(c, grant_type="refresh_token"),
     400, "invalid_request", "refresh_token is required."),
    ("text-plain", lambda c: (form(c, grant_type="client_credentials")[0], "text/plain"),
     415, "invalid_request", MEDIA),
    ("multipart", lambda c: (b"--x\r\n\r\n--x--\r\n", "multipart/form-data; boundary=x"),
     415, "invalid_request", MEDIA),
    ("body-without-content-type", lambda c: (form(c, grant_type="client_credentials")[0], None),
     415, "invalid_request", MEDIA),
    ("form-percent-encoded-invalid-utf8",
     lambda c: _raw_form(c, b"grant_type=client_credentials&scope=%FF%FE"),
     400, "invalid_request", MALFORMED_FORM),
    ("form-percent-encoded-surrogate", lambda c: _raw_form(c, b"grant_type=%ED%A0%80"),
     400, "invalid_request", MALFORMED_FORM),
    ("form-raw-invalid-utf8", lambda c: _raw_form(c, b"grant_type=client_credentials&scope=\xff"),
     400, "invalid_request", MALFORMED_FORM),
    ("form-truncated-percent-escape", lambda c: _raw_form(c, b"grant_type=client_credentials%"),
     400, "unsupported_grant_type", "The grant_type 'client_credentials%' is not supported."),
    ("form-non-hex-percent-escape", lambda c: _raw_form(c, b"grant_type=client_credentials&scope=%ZZ"),
     400, "invalid_scope", "The client may not request scope: %ZZ."),
    ("json-invalid", lambda c: (b'{"grant_type": ', JSON), 400, "invalid_request", BAD_JSON),
    ("json-invalid-utf8", lambda c: (b'{"grant_type": "client_credentials\xff"}', JSON),
     400, "invalid_request", BAD_JSON),
    ("json-lone-surrogate-value",
     lambda c: _raw_json(c, '"grant_type": "client_credentials", "scope": "\\ud800"'),
     400, "invalid_request", NOT_UTF8_JSON),
    ("json-lone-surrogate-grant_type", lambda c: (b'{"grant_type": "\\udfff"}', JSON),
     400, "invalid_request", NOT_UTF8_JSON),
    ("json-lone-surrogate-client_id",
     lambda c: (b'{"grant_type": "client_credentials", "client_id": "\\ud800", '
                b'"client_secret": "x"}', JSON),
     400, "invalid_request", NOT_UTF8_JSON),
    ("json-lone-surrogate-name", lambda c: _raw_json(c, '"grant_type": "password", "\\ud800": "x"'),
     400, "invalid_request", NOT_UTF8_JSON),
    ("json-array", lambda c: (b'[["grant_type", "client_credentials"]]', JSON),
     400, "invalid_request", "The JSON body must be an object."),
    ("json-number-value", lambda c: as_json(c, grant_type="client_credentials", expires_in=5),
     400, "invalid_request", "The parameter 'expires_in' must be a string."),
    ("json-nested-object", lambda c: as_json(c, grant_type={"x": "y"}),
     400, "invalid_request", "The parameter 'grant_type' must be a string."),
    ("json-deeply-nested", lambda c: (b"[" * 100000 + b"]" * 100000, JSON),
     400, "invalid_request", BAD_JSON),
]


@pytest.mark.parametrize(("build", "status", "error", "description"),
                         [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
async def test_malformed_requests_are_client_errors(
        app_factory: AppFactory, redis_db: redis.Redis, build: Build, status: int, error: str,
        description: str) -> None:
    async with app_factory(max_body_size=300000) as http:
        await new_user(http)
        client = await new_client(http)
        body, ctype = build(client)
        resp = await post(http, body, ctype)
        assert_error(resp, status, error, description)
        assert token_keys(redis_db) == set()


async def test_grant_not_allowed_for_the_client_is_unauthorized_client(
        http: httpx.AsyncClient, redis_db: redis.Redis) -> None:
    await new_user(http)
    machine = await new_client(http, grant_types=["client_credentials"])
    for grant, extra in (("password", {"username": "alice", "password": "correct horse"}),
                         ("refresh_token", {"refresh_token": "tsv_rt_x"})):
        body, ctype = form(machine, grant_type=grant, **extra)
        assert_error(await post(http, body, ctype), 400, "unauthorized_client",
                     f"The client may not use grant_type={grant}.")
    users_only = await new_client(http, grant_types=["password"])
    body, ctype = form(users_only, grant_type="client_credentials")
    assert_error(await post(http, body, ctype), 400, "unauthorized_client",
                 "The client may not use grant_type=client_credentials.")
    assert token_keys(redis_db) == set()


# -- body size ------------------------------------------------------------------------------

LIMIT = 1024


def _padded(client: Client, size: int) -> bytes:
    """A valid client_credentials form body of exactly `size` bytes (an ignored `pad` fills it)."""
    head = urlencode({"grant_type": "client_credentials", **creds(client)}).encode() + b"&pad="
    assert len(head) < size
    return head + b"x" * (size - len(head))


async def _chunks(body: bytes, size: int = 100) -> AsyncIterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i:i + size]


@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "chunked-no-length"])
@pytest.mark.parametrize(("size", "accepted"), [(LIMIT, True), (LIMIT + 1, False), (10 * LIMIT, False)],
                         ids=["at-limit", "one-over", "far-over"])
async def test_body_size_limit(app_factory: AppFactory, redis_db: redis.Redis, streamed: bool,
                               size: int, accepted: bool) -> None:
    async with app_factory(max_body_size=LIMIT) as http:
        client = await new_client(http)
        body = _padded(client, size)
        assert len(body) == size
        headers = {"Content-Type": FORM}
        if streamed:
            resp = await http.post("/oauth/token", content=_chunks(body), headers=headers)
            assert "content-length" not in resp.request.headers
            assert resp.request.headers["transfer-encoding"] == "chunked"
        else:
            resp = await http.post("/oauth/token", content=body, headers=headers)
            assert resp.request.headers["content-length"] == str(size)
        if accepted:
            assert_tokens(resp, expires_in=3600, scope="read write", refresh=False)
        else:
            assert_error(resp, 413, "invalid_request", f"The body exceeds {LIMIT} bytes.")
            assert token_keys(redis_db) == set()


@pytest.mark.parametrize("ctype", ["text/plain", JSON, FORM])
async def test_size_is_checked_before_media_type(app_factory: AppFactory, ctype: str) -> None:
    async with app_factory(max_body_size=LIMIT) as http:
        resp = await http.post("/oauth/token", content=b"a" * (LIMIT + 1), headers={"Content-Type": ctype})
        assert_error(resp, 413, "invalid_request", f"The body exceeds {LIMIT} bytes.")


async def test_declared_length_over_the_limit_is_refused_before_reading(app_factory: AppFactory) -> None:
    """A Content-Length beyond the limit is enough: the (short) body is never read."""
    async with app_factory(max_body_size=LIMIT) as http:
        resp = await http.post("/oauth/token", content=b"grant_type=client_credentials",
                               headers={"Content-Type": FORM, "Content-Length": str(LIMIT + 1)})
        assert_error(resp, 413, "invalid_request", f"The body exceeds {LIMIT} bytes.")


# -- response shape -------------------------------------------------------------------------

SHAPES: list[tuple[str, str, dict[str, Any], dict[str, str], str | None, bool]] = [
    # id, path, client fields, request params, expected scope, refresh token issued
    ("cc", "/oauth/token", {}, {"grant_type": "client_credentials"}, "read write", False),
    ("cc-v2-alias", "/oauth/v2/token", {}, {"grant_type": "client_credentials"}, "read write", False),
    ("cc-no-scopes-is-null", "/oauth/token", {"scopes": []}, {"grant_type": "client_credentials"},
     None, False),
    ("password", "/oauth/token", {}, {"grant_type": "password", "username": "alice",
                                      "password": "correct horse"}, "read write", True),
    ("password-v2-alias", "/oauth/v2/token", {}, {"grant_type": "password", "username": "alice",
                                                  "password": "correct horse"}, "read write", True),
    ("password-no-scopes-is-null", "/oauth/token", {"scopes": []},
     {"grant_type": "password", "username": "alice", "password": "correct horse"}, None, True),
    ("password-without-refresh-grant", "/oauth/token", {"grant_types": ["password"]},
     {"grant_type": "password", "username": "alice", "password": "correct horse"}, "read write", False),
]


@pytest.mark.parametrize(("path", "fields", "params", "scope", "refresh"),
                         [s[1:] for s in SHAPES], ids=[s[0] for s in SHAPES])
async def test_response_shape(http: httpx.AsyncClient, redis_db: redis.Redis, path: str,
                              fields: dict[str, Any], params: dict[str, str], scope: str | None,
                              refresh: bool) -> None:
    await new_user(http)
    client = await new_client(http, **fields)
    resp = await http.post(path, data={**params, **creds(client)})
    body = assert_tokens(resp, expires_in=3600, scope=scope, refresh=refresh)
    expected = {token_key(body["access_token"])}
    if refresh:
        expected.add(token_key(body["refresh_token"]))
    assert token_keys(redis_db) == {key.encode() for key in expected}
    doc = await introspect(http, client, body["access_token"])
    assert doc["token_type"] == "Bearer" and doc["client_id"] == client["client_id"]
    assert doc.get("scope") == scope
    assert doc.get("username") == params.get("username")


# -- scope ----------------------------------------------------------------------------------

SCOPES: list[tuple[str, dict[str, str], str | None, str | None]] = [
    # id, extra request params, expected scope, error description (invalid_scope) or None
    ("omitted-is-client-default", {}, "read write", None),
    ("empty-is-omitted", {"scope": ""}, "read write", None),
    ("subset", {"scope": "read"}, "read", None),
    ("all-reordered", {"scope": "write read"}, "read write", None),
    ("duplicates-collapse", {"scope": "read read"}, "read", None),
    ("outside", {"scope": "read admin"}, None, "The client may not request scope: admin."),
    ("only-outside", {"scope": "admin delete"}, None, "The client may not request scope: admin delete."),
    ("prefix-is-not-a-match", {"scope": "rea"}, None, "The client may not request scope: rea."),
    ("case-sensitive", {"scope": "READ"}, None, "The client may not request scope: READ."),
    ("double-space", {"scope": "read  write"}, None, "The scope parameter is malformed (RFC 6749 §3.3)."),
    ("leading-space", {"scope": " read"}, None, "The scope parameter is malformed (RFC 6749 §3.3)."),
    ("trailing-space", {"scope": "read "}, None, "The scope parameter is malformed (RFC 6749 §3.3)."),
    ("tab-separated", {"scope": "read\twrite"}, None, "The scope parameter is malformed (RFC 6749 §3.3)."),
    ("comma-separated-is-one-unknown-token", {"scope": "read,write"}, None,
     "The client may not request scope: read,write."),
    ("double-quote", {"scope": 'read"'}, None, "The scope parameter is malformed (RFC 6749 §3.3)."),
    ("backslash", {"scope": "read\\"}, None, "The scope parameter is malformed (RFC 6749 §3.3)."),
    ("non-ascii", {"scope": "réad"}, None, "The scope parameter is malformed (RFC 6749 §3.3)."),
    ("only-spaces", {"scope": "   "}, None, "The scope parameter is malformed (RFC 6749 §3.3)."),
]


@pytest.mark.parametrize("grant", ["client_credentials", "password"])
@pytest.mark.parametrize(("params", "scope", "problem"), [s[1:] for s in SCOPES],
                         ids=[s[0] for s in SCOPES])
async def test_scope(http: httpx.AsyncClient, client: Client, redis_db: redis.Redis, grant: str,
                     params: dict[str, str], scope: str | None, problem: str | None) -> None:
    user = {"username": "alice", "password": "correct horse"} if grant == "password" else {}
    resp = await http.post("/oauth/token", data={"grant_type": grant, **user, **params, **creds(client)})
    if problem is not None:
        assert_error(resp, 400, "invalid_scope", problem)
        assert token_keys(redis_db) == set()
        return
    body = assert_tokens(resp, expires_in=3600, scope=scope, refresh=grant == "password")
    assert (await introspect(http, client, body["access_token"]))["scope"] == scope


async def test_scope_as_json_list(http: httpx.AsyncClient, client: Client) -> None:
    ok = await post(http, *as_json(client, grant_type="client_credentials", scope=["write", "read"]))
    assert_tokens(ok, expires_in=3600, scope="read write", refresh=False)
    bad = await post(http, *as_json(client, grant_type="client_credentials", scope=["read", "admin"]))
    assert_error(bad, 400, "invalid_scope", "The client may not request scope: admin.")
    mixed = await post(http, *as_json(client, grant_type="client_credentials", scope=["read", 1]))
    assert_error(mixed, 400, "invalid_request", "The parameter 'scope' must be a string.")


async def test_client_without_scopes_may_ask_for_none(http: httpx.AsyncClient) -> None:
    bare = await new_client(http, scopes=[])
    resp = await http.post("/oauth/token", data={"grant_type": "client_credentials", "scope": "read",
                                                 **creds(bare)})
    assert_error(resp, 400, "invalid_scope", "The client may not request scope: read.")


# -- lifetimes ------------------------------------------------------------------------------

def assert_pttl(r: redis.Redis, key: str, seconds: int) -> None:
    """The key lives `seconds` from now (less the few milliseconds this test took)."""
    pttl = r.pttl(key)
    assert seconds * 1000 - 5000 < pttl <= seconds * 1000, (key, pttl)


TTLS: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any] | None, int, int]] = [
    # id, settings, client fields at creation, PATCH body or None, access ttl, refresh ttl
    ("defaults", {}, {}, None, 3600, 14 * 24 * 3600),
    ("global-settings", {"access_token_ttl": 60, "refresh_token_ttl": 600}, {}, None, 60, 600),
    ("client-at-creation", {}, {"access_token_ttl": 120, "refresh_token_ttl": 7200}, None, 120, 7200),
    ("client-over-global", {"access_token_ttl": 60, "refresh_token_ttl": 600},
     {"access_token_ttl": 90}, None, 90, 600),
    ("client-by-patch", {}, {}, {"access_token_ttl": 300}, 300, 14 * 24 * 3600),
    ("patch-back-to-global", {"access_token_ttl": 60}, {"access_token_ttl": 90},
     {"access_token_ttl": None}, 60, 14 * 24 * 3600),
    ("gofundo-2-weeks-access-1-hour-refresh", {}, {},
     {"access_token_ttl": 14 * 24 * 3600, "refresh_token_ttl": 3600}, 14 * 24 * 3600, 3600),
]


@pytest.mark.parametrize(("settings", "fields", "patch", "access_ttl", "refresh_ttl"),
                         [t[1:] for t in TTLS], ids=[t[0] for t in TTLS])
async def test_token_lifetimes_show_in_expires_in_and_redis_pttl(
        app_factory: AppFactory, redis_db: redis.Redis, settings: dict[str, Any],
        fields: dict[str, Any], patch: dict[str, Any] | None, access_ttl: int, refresh_ttl: int) -> None:
    async with app_factory(**settings) as http:
        await new_user(http)
        client = await new_client(http, **fields)
        # Warm the instance's client cache first: a PATCH must not leave it stale.
        warm = await http.post("/oauth/token", data={"grant_type": "client_credentials", **creds(client)})
        assert warm.status_code == 200, warm.text
        if patch is not None:
            resp = await http.patch(f"/admin/clients/{client['client_id']}", json=patch, headers=ADMIN)
            assert resp.status_code == 200, resp.text
        before = token_keys(redis_db)

        cc = await http.post("/oauth/token", data={"grant_type": "client_credentials", **creds(client)})
        cc_body = assert_tokens(cc, expires_in=access_ttl, scope="read write", refresh=False)
        pw = await http.post("/oauth/token", data={"grant_type": "password", "username": "alice",
                                                   "password": "correct horse", **creds(client)})
        pw_body = assert_tokens(pw, expires_in=access_ttl, scope="read write", refresh=True)
        rf = await http.post("/oauth/token", data={"grant_type": "refresh_token",
                                                   "refresh_token": pw_body["refresh_token"],
                                                   **creds(client)})
        rf_body = assert_tokens(rf, expires_in=access_ttl, scope="read write", refresh=True)

        assert token_keys(redis_db) - before == {token_key(t).encode() for t in (
            cc_body["access_token"], pw_body["access_token"], pw_body["refresh_token"],
            rf_body["access_token"], rf_body["refresh_token"])}
        for token in (cc_body["access_token"], pw_body["access_token"], rf_body["access_token"]):
            assert_pttl(redis_db, token_key(token), access_ttl)
            doc = await introspect(http, client, token)
            assert doc["exp"] - doc["iat"] == access_ttl
        # The rotated refresh token keeps its own lifetime (its key's: introspection calls it
        # inactive); the new one gets a full one.
        for token in (pw_body["refresh_token"], rf_body["refresh_token"]):
            assert_pttl(redis_db, token_key(token), refresh_ttl)
        doc = await introspect(http, client, rf_body["refresh_token"])
        assert doc["exp"] - doc["iat"] == refresh_ttl
        # The grant index outlives every token it lists, so revoking the grant finds them all.
        index = keys.grant_index(grant_of(rf_body["access_token"]))
        assert redis_db.pexpiretime(index) >= max(redis_db.pexpiretime(token_key(rf_body["access_token"])),
                                                  redis_db.pexpiretime(token_key(rf_body["refresh_token"])))
