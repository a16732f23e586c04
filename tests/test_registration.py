"""Client registration: Gancio's POST /api/client and RFC 7591 POST /oauth/register, closed
behind the admin key by default, open and rate-limited per remote address when configured."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis
from jwskate import Jwk

from tests.support.apps import AppFactory
from tests.support.assertions import assert_error, assert_json, bearer_challenge
from tests.support.config import ADMIN
from tests.support.redis_servers import RedisServer
from tests.support.stored import data_keys
from tokensvc.store import keys

SERVICE_SCOPES = ["read", "write", "offline_access"]  # the default scope_descriptions
CLOSED = "The admin key is missing or wrong."
THROTTLED = "Too many client registrations from this address; retry later."
GANCIO = {"client_name": "Wordpress Event Manager", "redirect_uris": "https://noblogs.org/",
          "website": "https://myapp.example"}
RFC7591 = {"client_name": "Calendar", "redirect_uris": ["https://cal.example/cb"]}
EC = Jwk.generate(alg="ES256", kid="cal-1")
PRIVATE_EC = EC.to_dict()


def created(resp: httpx.Response) -> dict[str, Any]:
    """A 201 that carries a secret: JSON and never cached."""
    doc: dict[str, Any] = assert_json(resp, 201)
    return doc


def client_keys(r: redis.Redis) -> list[bytes]:
    return sorted(r.scan_iter(match="tsv:{c:*"))


@contextlib.asynccontextmanager
async def from_address(http: httpx.AsyncClient, host: str) -> AsyncIterator[httpx.AsyncClient]:
    """A second HTTP client on the same running app, calling from another remote address."""
    transport = httpx.ASGITransport(app=http.app, client=(host, 1234))  # type: ignore[attr-defined]
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as other:
        yield other


# -- closed by default ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/client", "/oauth/register"])
@pytest.mark.parametrize("authorization", [
    None, "Bearer wrong-admin-key-0123456789", "Basic dGVzdC1hZG1pbi1rZXktMDEyMzQ1Njc4OQ==",
], ids=["none", "wrong", "basic"])
async def test_closed_without_the_admin_key(http: httpx.AsyncClient, redis_db: redis.Redis,
                                            path: str, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    body = GANCIO if path == "/api/client" else RFC7591
    resp = await http.post(path, json=body, headers=headers)
    assert_error(resp, 401, "invalid_token", CLOSED, bearer_challenge(CLOSED))
    assert list(data_keys(redis_db)) == []


async def test_gancio_form_with_the_admin_key(http: httpx.AsyncClient, redis_db: redis.Redis) -> None:
    before = int(time.time())
    doc = created(await http.post("/api/client", data=GANCIO, headers=ADMIN))
    secret = doc["client_secret"]
    assert secret.startswith("tsv_cs_") and len(secret) >= 7 + 43
    assert doc == {
        "client_id": doc["client_id"], "client_secret": secret,
        "client_name": "Wordpress Event Manager", "name": "Wordpress Event Manager",
        "redirect_uris": ["https://noblogs.org/"], "scopes": "read write offline_access",
        "website": "https://myapp.example",
    }
    # The admin API sees a client like any it made itself, without the secret.
    got = await http.get(f"/admin/clients/{doc['client_id']}", headers=ADMIN)
    assert got.status_code == 200
    view = got.json()
    assert view == {
        "client_id": doc["client_id"], "name": "Wordpress Event Manager",
        "token_endpoint_auth_method": "client_secret_post",
        "grant_types": ["authorization_code", "refresh_token"],
        "scopes": ["read", "write", "offline_access"], "redirect_uris": ["https://noblogs.org/"],
        "website": "https://myapp.example", "created_at": view["created_at"],
        "access_token_ttl": None, "refresh_token_ttl": None, "reuse_tokens": None,
        "max_user_login_attempts": None, "require_verified_users": False,
        "introspection": "own", "resources": [], "access_token_format": None,
        "dpop_bound_access_tokens": False, "jwks": None,
    }
    assert before <= view["created_at"] <= int(time.time())
    # Stored only as an argon2id hash ...
    stored = redis_db.get(keys.client(doc["client_id"]))
    assert stored is not None and secret.encode() not in stored and b'"$argon2id$' in stored
    # ... and the secret authenticates the client, in the body or with Basic.
    post = await http.post("/oauth/introspect", data={
        "token": "x", "client_id": doc["client_id"], "client_secret": secret})
    basic = await http.post("/oauth/introspect", data={"token": "x"}, auth=(doc["client_id"], secret))
    for resp in (post, basic):
        assert resp.status_code == 200 and resp.json() == {"active": False}
    # Admin-key registrations are not counted against any rate limit.
    assert list(redis_db.scan_iter(match="tsv:{r:*")) == []


async def test_gancio_json_with_lists_and_several_uris(http: httpx.AsyncClient) -> None:
    doc = created(await http.post("/api/client", headers=ADMIN, json={
        "client_name": "App", "redirect_uris": ["https://a.example/cb", "com.example.app:/cb"],
        "scopes": ["event:write"]}))
    assert doc == {"client_id": doc["client_id"], "client_secret": doc["client_secret"],
                   "client_name": "App", "name": "App",
                   "redirect_uris": ["https://a.example/cb", "com.example.app:/cb"],
                   "scopes": "event:write", "website": None}
    form = created(await http.post("/api/client", headers=ADMIN, data={
        "client_name": "App", "scopes": "event:write event:read",
        "redirect_uris": "https://a.example/cb\nhttp://127.0.0.1:8080/cb  http://[::1]/cb"}))
    assert form["redirect_uris"] == ["https://a.example/cb", "http://127.0.0.1:8080/cb",
                                     "http://[::1]/cb"]
    assert form["scopes"] == "event:write event:read"


@pytest.mark.parametrize(("body", "description"), [
    ({"redirect_uris": "https://a.example/cb"}, "'client_name' is required."),
    ({"client_name": "App"}, "'redirect_uris' is required: at least one redirect URI."),
    ({"client_name": "App", "redirect_uris": "https://a.example/cb#top"},
     "redirect URI 'https://a.example/cb#top' must not have a fragment."),
    ({"client_name": "App", "redirect_uris": "/cb"}, "redirect URI '/cb' is not an absolute URI."),
    ({"client_name": "App", "redirect_uris": "http://a.example/cb"},
     "http redirect URIs are allowed for loopback hosts only; use https."),
    ({"client_name": "App", "redirect_uris": "javascript:alert(1)"},
     "redirect URI 'javascript:alert(1)' needs https, http on a loopback host, or a private-use "
     "scheme named after a domain, such as com.example.app:/cb (RFC 8252 §7.1)."),
    ({"client_name": "App", "redirect_uris": "https://a.example/cb", "website": "ftp://a.example"},
     "'website' must be an http(s) URL."),
    ({"client_name": "App", "redirect_uris": "https://a.example/cb", "scopes": "a\\b"},
     "scope 'a\\b' is not a valid scope token (RFC 6749 §3.3)."),
], ids=["no-name", "no-uri", "fragment", "relative", "http", "javascript", "website", "scope"])
async def test_gancio_refuses_bad_fields(http: httpx.AsyncClient, redis_db: redis.Redis,
                                         body: dict[str, str], description: str) -> None:
    resp = await http.post("/api/client", headers=ADMIN, data=body)
    assert_error(resp, 400, "invalid_request", description)
    assert list(data_keys(redis_db)) == []


async def test_gancio_body_rules(http: httpx.AsyncClient, redis_db: redis.Redis) -> None:
    resp = await http.post("/api/client", headers={**ADMIN, "Content-Type": "text/plain"},
                           content=b"client_name=x")
    assert_error(resp, 415, "invalid_request",
                 "Send application/x-www-form-urlencoded or application/json.")
    resp = await http.post("/api/client", headers={
        **ADMIN, "Content-Type": "application/x-www-form-urlencoded"},
        content=b"client_name=a&client_name=b&redirect_uris=https://a.example/cb")
    assert_error(resp, 400, "invalid_request", "The parameter 'client_name' was sent more than once.")
    resp = await http.post("/api/client", headers={**ADMIN, "Content-Type": "application/json"},
                           content=b'{"client_name": "a", "client_name": "b"}')
    assert_error(resp, 400, "invalid_request", "The parameter 'client_name' was sent more than once.")
    resp = await http.post("/api/client", headers={**ADMIN, "Content-Type": "application/json"},
                           content=b'{"client_name": "\\ud800"}')
    assert_error(resp, 400, "invalid_request", "The JSON body holds a string that is not valid Unicode.")
    resp = await http.post("/api/client", headers=ADMIN,
                           data={**GANCIO, "website": "https://a.example/" + "x" * 70000})
    assert_error(resp, 413, "invalid_request", "The body exceeds 65536 bytes.")
    assert list(data_keys(redis_db)) == []


# -- RFC 7591 ---------------------------------------------------------------------------------


async def test_register_with_the_admin_key(http: httpx.AsyncClient, redis_db: redis.Redis) -> None:
    before = int(time.time())
    doc = created(await http.post("/oauth/register", headers=ADMIN, json={
        **RFC7591, "client_uri": "https://cal.example", "scope": "read write",
        "logo_uri": "https://cal.example/logo.png"}))
    secret = doc["client_secret"]
    assert secret.startswith("tsv_cs_")
    assert doc == {
        "client_id": doc["client_id"], "client_secret": secret, "client_secret_expires_at": 0,
        "client_id_issued_at": doc["client_id_issued_at"], "client_name": "Calendar",
        "redirect_uris": ["https://cal.example/cb"], "grant_types": ["authorization_code"],
        "response_types": ["code"], "token_endpoint_auth_method": "client_secret_basic",
        "scope": "read write", "client_uri": "https://cal.example",
    }
    assert before <= doc["client_id_issued_at"] <= int(time.time())
    view = (await http.get(f"/admin/clients/{doc['client_id']}", headers=ADMIN)).json()
    assert (view["name"], view["grant_types"], view["scopes"], view["website"],
            view["token_endpoint_auth_method"], view["created_at"]) == (
        "Calendar", ["authorization_code"], ["read", "write"], "https://cal.example",
        "client_secret_basic", doc["client_id_issued_at"])
    stored = redis_db.get(keys.client(doc["client_id"]))
    assert stored is not None and secret.encode() not in stored and b'"$argon2id$' in stored


async def test_register_private_key_jwt_and_client_secret_jwt(http: httpx.AsyncClient,
                                                             redis_db: redis.Redis) -> None:
    """RFC 7591 §2 `jwks` and the RFC 7523 methods: a private_key_jwt client gets no secret at
    all; a client_secret_jwt client's secret is kept sealed, never in plaintext."""
    jwks = {"keys": [EC.public_jwk().to_dict()]}
    doc = created(await http.post("/oauth/register", headers=ADMIN, json={
        "client_name": "Batch", "grant_types": ["client_credentials"],
        "token_endpoint_auth_method": "private_key_jwt", "jwks": jwks}))
    assert doc == {
        "client_id": doc["client_id"], "client_id_issued_at": doc["client_id_issued_at"],
        "client_name": "Batch", "redirect_uris": [], "grant_types": ["client_credentials"],
        "response_types": [], "token_endpoint_auth_method": "private_key_jwt",
        "scope": "read write offline_access", "jwks": jwks,
    }
    stored = redis_db.get(keys.client(doc["client_id"]))
    assert stored is not None and b'"secret_hash":null' in stored
    hmac = created(await http.post("/oauth/register", headers=ADMIN, json={
        "client_name": "Batch 2", "grant_types": ["client_credentials"],
        "token_endpoint_auth_method": "client_secret_jwt"}))
    assert hmac["token_endpoint_auth_method"] == "client_secret_jwt"
    stored = redis_db.get(keys.client(hmac["client_id"]))
    assert stored is not None and hmac["client_secret"].encode() not in stored
    assert b'"secret_sealed":"' in stored


async def test_register_defaults_and_public_clients(http: httpx.AsyncClient) -> None:
    public = created(await http.post("/oauth/register", headers=ADMIN, json={
        "redirect_uris": ["com.example.app:/oauth2redirect", "http://localhost:8765/cb"],
        "grant_types": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_method": "none"}))
    # No secret, so no secret expiry either; the name defaults to the redirect host.
    assert public == {
        "client_id": public["client_id"], "client_id_issued_at": public["client_id_issued_at"],
        "client_name": "unnamed client",
        "redirect_uris": ["com.example.app:/oauth2redirect", "http://localhost:8765/cb"],
        "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
        "token_endpoint_auth_method": "none", "scope": "read write offline_access",
    }
    machine = created(await http.post("/oauth/register", headers=ADMIN, json={
        "grant_types": ["client_credentials"], "client_name": "cron", "scope": ""}))
    assert machine == {
        "client_id": machine["client_id"], "client_secret": machine["client_secret"],
        "client_secret_expires_at": 0, "client_id_issued_at": machine["client_id_issued_at"],
        "client_name": "cron", "redirect_uris": [], "grant_types": ["client_credentials"],
        "response_types": [], "token_endpoint_auth_method": "client_secret_basic",
    }
    token = await http.post("/oauth/token", data={"grant_type": "client_credentials"},
                            auth=(machine["client_id"], machine["client_secret"]))
    assert token.status_code == 200 and token.json()["scope"] is None
    named = created(await http.post("/oauth/register", headers=ADMIN,
                                    json={"redirect_uris": ["https://cal.example/cb"]}))
    assert named["client_name"] == "cal.example"


INVALID_URI = "invalid_redirect_uri"
INVALID_META = "invalid_client_metadata"


@pytest.mark.parametrize(("body", "name", "description"), [
    ({"redirect_uris": ["https://a.example/cb#frag"]}, INVALID_URI,
     "redirect URI 'https://a.example/cb#frag' must not have a fragment."),
    ({"redirect_uris": ["cb/here"]}, INVALID_URI, "redirect URI 'cb/here' is not an absolute URI."),
    ({"redirect_uris": ["http://192.168.1.5/cb"]}, INVALID_URI,
     "http redirect URIs are allowed for loopback hosts only; use https."),
    ({"redirect_uris": ["http://localhost.evil.example/cb"]}, INVALID_URI,
     "http redirect URIs are allowed for loopback hosts only; use https."),
    ({"redirect_uris": ["myapp:/cb"]}, INVALID_URI,
     "redirect URI 'myapp:/cb' needs https, http on a loopback host, or a private-use scheme named "
     "after a domain, such as com.example.app:/cb (RFC 8252 §7.1)."),
    ({"redirect_uris": ["https://a.example/c b"]}, INVALID_URI,
     "redirect URI 'https://a.example/c b' contains a space or control character."),
    ({}, INVALID_URI, "'redirect_uris' is required: at least one redirect URI."),
    ({"redirect_uris": "https://a.example/cb", "client_name": "x" * 201}, INVALID_META,
     "'client_name' must be a non-empty string of at most 200 characters."),
    ({"redirect_uris": [1]}, INVALID_URI, "'redirect_uris' must be a list of strings."),
    ({**RFC7591, "grant_types": ["authorization_code", "implicit"]}, INVALID_META,
     "grant type 'implicit' is not supported; use authorization_code, client_credentials, password, "
     "refresh_token."),
    ({**RFC7591, "grant_types": "authorization_code", "response_types": ["token"]}, INVALID_META,
     "response type 'token' is not supported; use code."),
    ({**RFC7591, "response_types": []}, INVALID_META,
     "response_types and grant_types disagree: response type 'code' goes with grant type "
     "'authorization_code' (RFC 7591 §2.1)."),
    ({"grant_types": ["client_credentials"], "response_types": ["code"]}, INVALID_META,
     "response_types and grant_types disagree: response type 'code' goes with grant type "
     "'authorization_code' (RFC 7591 §2.1)."),
    ({**RFC7591, "token_endpoint_auth_method": "tls_client_auth"}, INVALID_META,
     "token_endpoint_auth_method must be one of client_secret_basic, client_secret_post, "
     "client_secret_jwt, private_key_jwt, none."),
    ({**RFC7591, "token_endpoint_auth_method": "private_key_jwt"}, INVALID_META,
     "private_key_jwt needs 'jwks': the client's public keys, which its assertions are verified with."),
    ({**RFC7591, "token_endpoint_auth_method": "private_key_jwt", "jwks": {"keys": [PRIVATE_EC]}},
     INVALID_META, "'jwks' must hold public keys only: a key has the private member(s) d. Register "
     "the public half."),
    ({**RFC7591, "token_endpoint_auth_method": "private_key_jwt",
      "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0LXNlY3JldA", "alg": "HS256"}]}},
     INVALID_META, "'jwks' must hold public keys only: a symmetric (oct) key is a shared secret; use "
     "client_secret_jwt for that."),
    ({**RFC7591, "token_endpoint_auth_method": "private_key_jwt",
      "jwks_uri": "https://cal.example/jwks.json"}, INVALID_META,
     "'jwks_uri' is not supported: register the public keys themselves in 'jwks'."),
    ({"grant_types": ["client_credentials"], "token_endpoint_auth_method": "none"}, INVALID_META,
     "a public client cannot use client_credentials (RFC 6749 §4.4)."),
    ({**RFC7591, "scope": ["read"]}, INVALID_META, "'scope' must be a string of space-separated scopes."),
    ({**RFC7591, "scope": "read \"quoted\""}, INVALID_META,
     "scope '\"quoted\"' is not a valid scope token (RFC 6749 §3.3)."),
    ({**RFC7591, "client_uri": "javascript:alert(1)"}, INVALID_META, "'client_uri' must be an http(s) URL."),
    ({**RFC7591, "grant_types": []}, INVALID_META, "'grant_types' must name at least one grant type."),
], ids=["fragment", "relative", "http-lan", "http-not-loopback", "scheme-without-dot", "space",
        "no-uris", "long-name", "uri-not-string", "unknown-grant", "token-response",
        "code-grant-without-code", "code-without-code-grant", "auth-method", "pkj-without-jwks",
        "private-jwk", "oct-jwk", "jwks-uri", "public-cc",
        "scope-list", "scope-token", "client-uri", "no-grants"])
async def test_register_refuses_bad_metadata(http: httpx.AsyncClient, redis_db: redis.Redis,
                                             body: dict[str, Any], name: str, description: str) -> None:
    resp = await http.post("/oauth/register", headers=ADMIN, json=body)
    assert_error(resp, 400, name, description)
    assert list(data_keys(redis_db)) == []


async def test_register_takes_json_only(http: httpx.AsyncClient, redis_db: redis.Redis) -> None:
    resp = await http.post("/oauth/register", headers=ADMIN,
                           data={"redirect_uris": "https://a.example/cb"})
    assert_error(resp, 415, "invalid_request", "Send application/json (RFC 7591 §3.1).")
    resp = await http.post("/oauth/register", headers=ADMIN)
    assert_error(resp, 415, "invalid_request", "Send application/json (RFC 7591 §3.1).")
    for body, description in ((b"", "The body is not valid JSON."),
                              (b"[]", "The JSON body must be an object."),
                              (b'{"scope": "a", "scope": "b"}',
                               "The parameter 'scope' was sent more than once.")):
        resp = await http.post("/oauth/register", content=body,
                               headers={**ADMIN, "Content-Type": "application/json"})
        assert_error(resp, 400, "invalid_request", description)
    assert list(data_keys(redis_db)) == []


# -- open registration and its rate limit -----------------------------------------------------


async def test_open_registration_needs_no_key(app_factory: AppFactory, redis_db: redis.Redis) -> None:
    async with app_factory(open_registration=True) as http:
        gancio = created(await http.post("/api/client", data=GANCIO))
        rfc = created(await http.post("/oauth/register", json=RFC7591))
        assert gancio["client_name"] == "Wordpress Event Manager" and rfc["client_name"] == "Calendar"
        assert len(client_keys(redis_db)) == 2
        # A wrong key is still refused rather than quietly treated as anonymous.
        resp = await http.post("/oauth/register", json=RFC7591,
                               headers={"Authorization": "Bearer not-the-admin-key-000"})
        assert_error(resp, 401, "invalid_token", CLOSED, bearer_challenge(CLOSED))
        # httpx's ASGI transport calls from 127.0.0.1: two registrations counted, one window.
        counter = keys.registrations("127.0.0.1")
        assert redis_db.get(counter) == b"2"
        assert 3590 < redis_db.ttl(counter) <= 3600


async def test_open_registration_allows_only_user_grants(app_factory: AppFactory,
                                                        redis_db: redis.Redis) -> None:
    # Anyone may register a client that users sign in to, but not one that acts on its own.
    async with app_factory(open_registration=True) as http:
        for grants in (["client_credentials"], ["authorization_code", "password"]):
            resp = await http.post("/oauth/register", json={**RFC7591, "grant_types": grants})
            assert resp.status_code == 400, resp.text
            assert resp.json()["error"] == "invalid_client_metadata"
            assert "needs the admin key" in resp.json()["error_description"]
        assert client_keys(redis_db) == []
        # The admin key may register any grant.
        resp = await http.post("/oauth/register", headers=ADMIN,
                               json={"grant_types": ["client_credentials"], "client_name": "svc"})
        assert created(resp)["grant_types"] == ["client_credentials"]


async def test_admin_api_refuses_script_redirect_uris(http: httpx.AsyncClient,
                                                      redis_db: redis.Redis) -> None:
    for uri in ("javascript:alert(1)", "data:text/html,hi", "https://app.example/cb x"):
        resp = await http.post("/admin/clients", headers=ADMIN,
                               json={"name": "x", "redirect_uris": [uri]})
        assert resp.status_code == 400 and "redirect URI" in resp.json()["error_description"], uri
    assert client_keys(redis_db) == []


async def test_rate_limit_per_address(app_factory: AppFactory, redis_db: redis.Redis) -> None:
    async with app_factory(open_registration=True, registration_rate_limit=3) as http:
        # Every attempt counts, refused ones too, across both endpoints.
        assert (await http.post("/api/client", data=GANCIO)).status_code == 201
        assert (await http.post("/oauth/register", json={"redirect_uris": ["x"]})).status_code == 400
        assert (await http.post("/oauth/register", json=RFC7591)).status_code == 201
        for path, body in (("/api/client", GANCIO), ("/oauth/register", RFC7591)):
            resp = await http.post(path, json=body)
            assert_error(resp, 429, "temporarily_unavailable", THROTTLED)
            assert 3590 < int(resp.headers["retry-after"]) <= 3600
        assert len(client_keys(redis_db)) == 2
        # The admin key is never limited, and is not counted.
        assert (await http.post("/oauth/register", json=RFC7591, headers=ADMIN)).status_code == 201
        assert redis_db.get(keys.registrations("127.0.0.1")) == b"5"
        # Another address has its own window.
        async with from_address(http, "10.0.0.2") as other:
            for _ in range(3):
                assert (await other.post("/api/client", data=GANCIO)).status_code == 201
            assert_error(await other.post("/api/client", data=GANCIO), 429,
                         "temporarily_unavailable", THROTTLED)
        async with from_address(http, "2001:db8::7") as v6:
            assert (await v6.post("/oauth/register", json=RFC7591)).status_code == 201
        assert redis_db.get(keys.registrations("2001:db8::7")) == b"1"
        # The window ends: the address may register again.
        redis_db.delete(keys.registrations("127.0.0.1"))
        assert (await http.post("/oauth/register", json=RFC7591)).status_code == 201
        # No raw address is kept in Redis.
        assert not [k for k in data_keys(redis_db) if b"10.0.0.2" in k or b"127.0.0.1" in k]


async def test_closed_registration_counts_nothing(http: httpx.AsyncClient,
                                                  redis_db: redis.Redis) -> None:
    for _ in range(12):
        assert (await http.post("/oauth/register", json=RFC7591)).status_code == 401
    assert created(await http.post("/oauth/register", json=RFC7591, headers=ADMIN))
    assert list(redis_db.scan_iter(match="tsv:{r:*")) == []


async def test_storage_outage_is_503(
        app_factory: AppFactory, redis_server: RedisServer, redis_db: redis.Redis) -> None:
    async with app_factory(open_registration=True) as http:
        redis_server.stop()
        try:
            for path, body, headers in (("/oauth/register", RFC7591, {}),
                                        ("/api/client", GANCIO, ADMIN)):
                resp = await http.post(path, json=body, headers=headers)
                assert resp.status_code == 503, resp.text
                assert resp.json()["error"] == "temporarily_unavailable"
                assert resp.headers["retry-after"] == "1"
        finally:
            redis_server.start()
