"""The admin JSON API: clients (with finAPI configuration) and users, behind the admin key."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
import redis
from jwskate import Jwk

from tests.support.api import cc_token, new_client, new_user, password_token
from tests.support.assertions import assert_error, bearer_challenge
from tests.support.config import ADMIN
from tests.support.stored import data_keys, token_key
from tokensvc.store import keys

CLIENT_FIELDS = {"client_id", "name", "token_endpoint_auth_method", "grant_types", "scopes",
                 "redirect_uris", "website", "created_at", "access_token_ttl", "refresh_token_ttl",
                 "reuse_tokens", "max_user_login_attempts", "require_verified_users", "introspection",
                 "resources", "access_token_format", "dpop_bound_access_tokens", "jwks"}


def assert_json(resp: httpx.Response, status: int, *, no_store: bool = False) -> Any:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    if no_store:
        assert resp.headers["cache-control"] == "no-store" and resp.headers["pragma"] == "no-cache"
    return resp.json()


def assert_no_secret(doc: Any) -> None:
    """No secret-bearing member, and no hash, anywhere in an admin answer."""
    if isinstance(doc, dict):
        assert not {"client_secret", "secret_hash", "password", "password_hash"} & set(doc)
        for value in doc.values():
            assert_no_secret(value)
    elif isinstance(doc, list):
        for value in doc:
            assert_no_secret(value)
    else:
        assert "$argon2" not in str(doc)


# -- the admin key ----------------------------------------------------------------------------


ADMIN_ROUTES = [
    ("GET", "/admin/clients"), ("POST", "/admin/clients"), ("GET", "/admin/clients/x"),
    ("PATCH", "/admin/clients/x"), ("DELETE", "/admin/clients/x"), ("POST", "/admin/clients/x/secret"),
    ("POST", "/admin/users"), ("GET", "/admin/users/x"), ("PATCH", "/admin/users/x"),
    ("DELETE", "/admin/users/x"), ("POST", "/admin/users/x/unlock"),
]


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
@pytest.mark.parametrize("authorization", [
    None, "Bearer wrong-admin-key-0123456789", "Bearer ", "Bearer test-admin-key-012345678",
    "Bearer test-admin-key-01234567890", "Basic dGVzdC1hZG1pbi1rZXktMDEyMzQ1Njc4OQ==",
], ids=["none", "wrong", "empty", "prefix", "longer", "basic"])
async def test_admin_key_required(http: httpx.AsyncClient, redis_db: redis.Redis, method: str,
                                  path: str, authorization: str | None) -> None:
    before = sorted(data_keys(redis_db))
    headers = {} if authorization is None else {"Authorization": authorization}
    resp = await http.request(method, path, headers=headers, json={"name": "x", "username": "x",
                                                                    "password": "12345678"})
    description = "The admin key is missing or wrong."
    assert_error(resp, 401, "invalid_token", description, bearer_challenge(description))
    assert sorted(data_keys(redis_db)) == before


async def test_a_client_token_is_not_the_admin_key(http: httpx.AsyncClient) -> None:
    client = await new_client(http)
    token = (await cc_token(http, client)).json()["access_token"]
    resp = await http.get("/admin/clients", headers={"Authorization": f"Bearer {token}"})
    description = "The admin key is missing or wrong."
    assert_error(resp, 401, "invalid_token", description, bearer_challenge(description))


# -- clients ----------------------------------------------------------------------------------


async def test_create_client_shows_the_secret_once(http: httpx.AsyncClient,
                                                   redis_db: redis.Redis) -> None:
    before = int(time.time())
    resp = await http.post("/admin/clients", headers=ADMIN, json={
        "name": "Gofundo koppeling", "redirect_uris": ["https://app.example/cb"],
        "scopes": ["read", "write"], "grant_types": ["client_credentials"],
        "website": "https://app.example"})
    created = assert_json(resp, 201, no_store=True)
    secret = created["client_secret"]
    assert secret.startswith("tsv_cs_") and len(secret) >= 7 + 43  # at least 256 bits
    assert created == {
        "client_id": created["client_id"], "client_secret": secret, "name": "Gofundo koppeling",
        "token_endpoint_auth_method": "client_secret_basic",
        "grant_types": ["client_credentials"], "scopes": ["read", "write"],
        "redirect_uris": ["https://app.example/cb"], "website": "https://app.example",
        "created_at": created["created_at"], "access_token_ttl": None, "refresh_token_ttl": None,
        "reuse_tokens": None, "max_user_login_attempts": None, "require_verified_users": False,
        "introspection": "own", "resources": [], "access_token_format": None,
        "dpop_bound_access_tokens": False, "jwks": None,
    }
    assert before <= created["created_at"] <= int(time.time())
    # The secret works ...
    assert (await cc_token(http, created)).status_code == 200
    # ... and is never shown again.
    view = {k: v for k, v in created.items() if k != "client_secret"}
    got = await http.get(f"/admin/clients/{created['client_id']}", headers=ADMIN)
    assert assert_json(got, 200) == view
    listed = assert_json(await http.get("/admin/clients", headers=ADMIN), 200)
    assert listed == {"clients": [view], "total": 1, "offset": 0, "limit": 100}
    patched = await http.patch(f"/admin/clients/{created['client_id']}", headers=ADMIN,
                               json={"name": "renamed"})
    assert assert_json(patched, 200) == {**view, "name": "renamed"}
    for doc in (got.json(), listed, patched.json()):
        assert_no_secret(doc)
    # Stored only as an argon2id hash.
    stored = redis_db.get(keys.client(created["client_id"]))
    assert stored is not None and secret.encode() not in stored and b'"$argon2id$' in stored


async def test_create_client_defaults_and_public_clients(http: httpx.AsyncClient) -> None:
    plain = assert_json(await http.post("/admin/clients", headers=ADMIN, json={"name": "n"}), 201)
    assert plain["grant_types"] == ["client_credentials", "password", "refresh_token"]
    assert plain["scopes"] == [] and plain["redirect_uris"] == [] and plain["website"] is None
    public = assert_json(await http.post("/admin/clients", headers=ADMIN, json={
        "name": "spa", "token_endpoint_auth_method": "none"}), 201, no_store=True)
    assert set(public) == CLIENT_FIELDS  # no client_secret member at all
    assert public["grant_types"] == ["password", "refresh_token"]
    assert public["token_endpoint_auth_method"] == "none"


@pytest.mark.parametrize(("doc", "description"), [
    ({}, "'name' is required."),
    ({"name": ""}, "'name' must be a non-empty string of at most 200 characters."),
    ({"name": "n", "token_endpoint_auth_method": "tls_client_auth"},
     "token_endpoint_auth_method must be one of client_secret_basic, client_secret_post, "
     "client_secret_jwt, private_key_jwt, none."),
    ({"name": "n", "token_endpoint_auth_method": "private_key_jwt"},
     "private_key_jwt needs 'jwks': the client's public keys, which its assertions are verified with."),
    ({"name": "n", "token_endpoint_auth_method": "none", "grant_types": ["client_credentials"]},
     "a public client cannot use client_credentials (RFC 6749 §4.4)."),
    ({"name": "n", "redirect_uris": ["https://a.example/cb#x"]},
     "redirect URI 'https://a.example/cb#x' must not have a fragment."),
    ({"name": "n", "access_token_ttl": -1}, "'access_token_ttl' must be a positive integer or null."),
    ({"name": "n", "access_token_ttl": 2 ** 62},
     "'access_token_ttl' must be at most 315360000 seconds (ten years)."),
])
async def test_create_client_refuses_bad_values(http: httpx.AsyncClient, redis_db: redis.Redis,
                                                doc: dict[str, Any], description: str) -> None:
    resp = await http.post("/admin/clients", headers=ADMIN, json=doc)
    assert_error(resp, 400, "invalid_request", description)
    assert list(data_keys(redis_db)) == []


async def test_list_shows_only_active_clients(http: httpx.AsyncClient) -> None:
    first = await new_client(http, name="first")
    second = await new_client(http, name="second")
    third = await new_client(http, name="third")
    listed = assert_json(await http.get("/admin/clients", headers=ADMIN), 200)
    assert listed["total"] == 3 and (listed["offset"], listed["limit"]) == (0, 100)
    assert {c["client_id"] for c in listed["clients"]} == {
        first["client_id"], second["client_id"], third["client_id"]}
    for c in listed["clients"]:
        assert set(c) == CLIENT_FIELDS

    deleted = await http.delete(f"/admin/clients/{second['client_id']}", headers=ADMIN)
    assert deleted.status_code == 204 and deleted.content == b""

    listed = assert_json(await http.get("/admin/clients", headers=ADMIN), 200)
    assert listed["total"] == 2
    assert {c["client_id"] for c in listed["clients"]} == {first["client_id"], third["client_id"]}
    page = assert_json(await http.get("/admin/clients", params={"offset": 1, "limit": 1},
                                      headers=ADMIN), 200)
    assert page["total"] == 2 and (page["offset"], page["limit"]) == (1, 1)
    assert len(page["clients"]) == 1 and page["clients"][0] in listed["clients"]


@pytest.mark.parametrize("params", [{"offset": "-1"}, {"limit": "0"}, {"limit": "1001"},
                                    {"offset": "x"}, {"limit": "1.5"}])
async def test_list_refuses_bad_paging(http: httpx.AsyncClient, params: dict[str, str]) -> None:
    resp = await http.get("/admin/clients", params=params, headers=ADMIN)
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_request"


async def test_patch_name_uris_scopes_and_website(http: httpx.AsyncClient) -> None:
    client = await new_client(http, redirect_uris=["https://a.example/cb"])
    resp = await http.patch(f"/admin/clients/{client['client_id']}", headers=ADMIN, json={
        "name": "OmniFund app", "redirect_uris": ["https://b.example/cb", "http://localhost:8080/cb"],
        "scopes": ["accounts:read"], "website": "https://b.example"})
    view = assert_json(resp, 200)
    expected = {k: v for k, v in client.items() if k != "client_secret"}
    expected.update({"name": "OmniFund app",
                     "redirect_uris": ["https://b.example/cb", "http://localhost:8080/cb"],
                     "scopes": ["accounts:read"], "website": "https://b.example"})
    assert view == expected
    assert assert_json(await http.get(f"/admin/clients/{client['client_id']}", headers=ADMIN),
                       200) == expected
    # The new scopes are in force at once.
    token = await cc_token(http, client)
    assert token.status_code == 200 and token.json()["scope"] == "accounts:read"
    refused = await cc_token(http, client, scope="read")
    assert_error(refused, 400, "invalid_scope", "The client may not request scope: read.")


async def test_patch_configuration_takes_effect(http: httpx.AsyncClient,
                                                redis_db: redis.Redis) -> None:
    client = await new_client(http)
    await new_user(http)
    await new_user(http, "bob", verified=False)
    resp = await http.patch(f"/admin/clients/{client['client_id']}", headers=ADMIN, json={
        "access_token_ttl": 120, "refresh_token_ttl": 600, "reuse_tokens": True,
        "max_user_login_attempts": 2, "require_verified_users": True})
    view = assert_json(resp, 200)
    assert (view["access_token_ttl"], view["refresh_token_ttl"], view["reuse_tokens"],
            view["max_user_login_attempts"], view["require_verified_users"]) == (120, 600, True, 2, True)

    first = (await cc_token(http, client)).json()
    assert first["expires_in"] == 120
    assert 0 < redis_db.pttl(token_key(first["access_token"])) <= 120_000
    assert (await cc_token(http, client)).json()["access_token"] == first["access_token"]  # reuse
    user = (await password_token(http, client)).json()
    assert user["expires_in"] == 120
    assert 120_000 < redis_db.pttl(token_key(user["refresh_token"])) <= 600_000

    unverified = await password_token(http, client, username="bob")
    assert_error(unverified, 403, "access_denied",
                 "The user is not verified, and this client requires verified users.")

    wrong = await password_token(http, client, password="wrong password")
    assert_error(wrong, 400, "invalid_grant", "Invalid username or password.")
    locked = await password_token(http, client, password="wrong password")
    assert_error(locked, 423, "user_locked", "The user is locked after too many failed logins.")
    still = await password_token(http, client)
    assert_error(still, 423, "user_locked", "The user is locked after too many failed logins.")

    # null goes back to the global defaults.
    resp = await http.patch(f"/admin/clients/{client['client_id']}", headers=ADMIN, json={
        "access_token_ttl": None, "reuse_tokens": None, "require_verified_users": False})
    view = assert_json(resp, 200)
    assert (view["access_token_ttl"], view["reuse_tokens"], view["require_verified_users"]) == \
        (None, None, False)
    again = (await cc_token(http, client)).json()
    assert again["expires_in"] == 3600 and again["access_token"] != first["access_token"]
    assert (await password_token(http, client, username="bob")).status_code == 200


PATCH_REFUSALS: list[tuple[dict[str, Any], str]] = [
    ({"access_token_ttl": -60}, "'access_token_ttl' must be a positive integer or null."),
    ({"access_token_ttl": 0}, "'access_token_ttl' must be a positive integer or null."),
    ({"access_token_ttl": "60"}, "'access_token_ttl' must be a positive integer or null."),
    ({"access_token_ttl": 1.5}, "'access_token_ttl' must be a positive integer or null."),
    ({"access_token_ttl": True}, "'access_token_ttl' must be a positive integer or null."),
    ({"access_token_ttl": 2 ** 62}, "'access_token_ttl' must be at most 315360000 seconds (ten years)."),
    ({"refresh_token_ttl": 315360001},
     "'refresh_token_ttl' must be at most 315360000 seconds (ten years)."),
    ({"refresh_token_ttl": -1}, "'refresh_token_ttl' must be a positive integer or null."),
    ({"max_user_login_attempts": 0}, "'max_user_login_attempts' must be a positive integer or null."),
    ({"reuse_tokens": "yes"}, "'reuse_tokens' must be true, false or null (the global default)."),
    ({"require_verified_users": None}, "'require_verified_users' must be true or false."),
    ({"color": "red"}, "Cannot change: color."),
    ({"client_secret": "tsv_cs_mine"}, "Cannot change: client_secret."),
    ({"secret_hash": "$argon2id$x"}, "Cannot change: secret_hash."),
    ({"client_id": "other"}, "Cannot change: client_id."),
    ({"token_endpoint_auth_method": "none"},
     "A client cannot switch between public (none) and confidential authentication; create a new client."),
    ({"token_endpoint_auth_method": "private_key_jwt"},
     "private_key_jwt needs 'jwks': the client's public keys, which its assertions are verified with."),
    ({"jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"}]}},
     "'jwks' must hold public keys only: a symmetric (oct) key is a shared secret; use "
     "client_secret_jwt for that."),
    ({"created_at": 0, "name": "ok"}, "Cannot change: created_at."),
    ({"name": ""}, "'name' must be a non-empty string of at most 200 characters."),
    ({"name": None}, "'name' is required."),
    ({"name": "a\nb"}, "'name' must not contain control characters."),
    ({"redirect_uris": ["https://a.example/cb#frag"]},
     "redirect URI 'https://a.example/cb#frag' must not have a fragment."),
    ({"redirect_uris": ["https://a.example/cb#"]},
     "redirect URI 'https://a.example/cb#' must not have a fragment."),
    ({"redirect_uris": ["/relative/cb"]}, "redirect URI '/relative/cb' is not an absolute URI."),
    ({"redirect_uris": ["http://evil.example/cb"]},
     "http redirect URIs are allowed for loopback hosts only; use https."),
    ({"redirect_uris": "https://a.example/cb", "scopes": [1]}, "'scopes' must be a list of strings."),
    ({"scopes": ['bad"scope']}, "scope 'bad\"scope' is not a valid scope token (RFC 6749 §3.3)."),
    ({"scopes": ["bad\\scope"]}, "scope 'bad\\scope' is not a valid scope token (RFC 6749 §3.3)."),
    ({"scopes": ["é"]}, "scope 'é' is not a valid scope token (RFC 6749 §3.3)."),
    ({"grant_types": ["implicit"]},
     "grant type 'implicit' is not supported; use authorization_code, client_credentials, password, "
     "refresh_token."),
    ({"grant_types": []}, "a client needs at least one grant type."),
    ({"website": "ftp://files.example"}, "'website' must be an http(s) URL."),
]


@pytest.mark.parametrize(("doc", "description"), PATCH_REFUSALS,
                         ids=[f"{i}-{next(iter(d))}" for i, (d, _) in enumerate(PATCH_REFUSALS)])
async def test_patch_refuses_bad_values_and_changes_nothing(
        http: httpx.AsyncClient, redis_db: redis.Redis, doc: dict[str, Any], description: str) -> None:
    client = await new_client(http, redirect_uris=["https://a.example/cb"])
    key = keys.client(client["client_id"])
    stored = redis_db.get(key)
    view = assert_json(await http.get(f"/admin/clients/{client['client_id']}", headers=ADMIN), 200)

    resp = await http.patch(f"/admin/clients/{client['client_id']}", headers=ADMIN, json=doc)
    assert_error(resp, 400, "invalid_request", description)

    assert redis_db.get(key) == stored
    assert assert_json(await http.get(f"/admin/clients/{client['client_id']}", headers=ADMIN),
                       200) == view
    assert (await cc_token(http, client)).status_code == 200


async def test_public_client_cannot_get_client_credentials(http: httpx.AsyncClient,
                                                           redis_db: redis.Redis) -> None:
    public = await new_client(http, token_endpoint_auth_method="none")
    stored = redis_db.get(keys.client(public["client_id"]))
    resp = await http.patch(f"/admin/clients/{public['client_id']}", headers=ADMIN,
                            json={"grant_types": ["password", "client_credentials"]})
    assert_error(resp, 400, "invalid_request",
                 "a public client cannot use client_credentials (RFC 6749 §4.4).")
    assert redis_db.get(keys.client(public["client_id"])) == stored
    rotate = await http.post(f"/admin/clients/{public['client_id']}/secret", headers=ADMIN)
    assert_error(rotate, 400, "invalid_request", "A public client has no secret.")
    assert redis_db.get(keys.client(public["client_id"])) == stored


async def test_large_but_valid_lifetimes_work(http: httpx.AsyncClient, redis_db: redis.Redis) -> None:
    """Gofundo: access tokens for two weeks, refresh tokens for one hour."""
    client = await new_client(http, access_token_ttl=14 * 86400, refresh_token_ttl=3600)
    await new_user(http)
    tokens = (await password_token(http, client)).json()
    assert tokens["expires_in"] == 14 * 86400
    assert 14 * 86400_000 - 5000 < redis_db.pttl(token_key(tokens["access_token"])) <= 14 * 86400_000
    assert 3_595_000 < redis_db.pttl(token_key(tokens["refresh_token"])) <= 3_600_000
    longest = await http.patch(f"/admin/clients/{client['client_id']}", headers=ADMIN,
                               json={"access_token_ttl": 315360000})
    assert longest.status_code == 200
    assert (await cc_token(http, client)).json()["expires_in"] == 315360000


async def test_rotate_secret(http: httpx.AsyncClient, redis_db: redis.Redis) -> None:
    client = await new_client(http)
    old = client["client_secret"]
    # Warm the cache with the old secret, twice (the second time from the cache).
    assert (await cc_token(http, client)).status_code == 200
    assert (await cc_token(http, client)).status_code == 200
    token = (await cc_token(http, client)).json()["access_token"]

    resp = await http.post(f"/admin/clients/{client['client_id']}/secret", headers=ADMIN)
    rotated = assert_json(resp, 200, no_store=True)
    new = rotated["client_secret"]
    assert new != old and new.startswith("tsv_cs_")
    assert rotated == {**client, "client_secret": new}

    refused = await cc_token(http, client)
    assert_error(refused, 401, "invalid_client", "Client authentication failed.")
    basic = await http.post("/oauth/token", data={"grant_type": "client_credentials"},
                            auth=(client["client_id"], old))
    assert_error(basic, 401, "invalid_client", "Client authentication failed.", 'Basic realm="tokensvc"')
    assert (await cc_token(http, {**client, "client_secret": new})).status_code == 200
    # Tokens issued before the rotation stay valid (rotation is not revocation).
    info = await http.post("/oauth/introspect", data={"token": token},
                           auth=(client["client_id"], new))
    assert info.json()["active"] is True
    # Shown once: not in the client view afterwards.
    got = assert_json(await http.get(f"/admin/clients/{client['client_id']}", headers=ADMIN), 200)
    assert_no_secret(got)
    stored = redis_db.get(keys.client(client["client_id"]))
    assert stored is not None and new.encode() not in stored and old.encode() not in stored


async def test_delete_client_then_404(http: httpx.AsyncClient, redis_db: redis.Redis) -> None:
    client = await new_client(http)
    cid = client["client_id"]
    resp = await http.delete(f"/admin/clients/{cid}", headers=ADMIN)
    assert resp.status_code == 204 and resp.content == b""
    assert redis_db.exists(keys.client(cid)) == 0
    assert redis_db.zscore(keys.CLIENTS_INDEX, cid) is None
    for method, path, body in (("GET", f"/admin/clients/{cid}", None),
                               ("DELETE", f"/admin/clients/{cid}", None),
                               ("PATCH", f"/admin/clients/{cid}", {"name": "x"}),
                               ("POST", f"/admin/clients/{cid}/secret", None)):
        assert_error(await http.request(method, path, headers=ADMIN, json=body), 404, "not_found",
                     "No such client.")
    assert list(redis_db.scan_iter(match="tsv:{c:*")) == []
    assert_error(await cc_token(http, client), 401, "invalid_client", "Client authentication failed.")


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/admin/clients/nope"), ("PATCH", "/admin/clients/nope"),
    ("DELETE", "/admin/clients/nope"), ("POST", "/admin/clients/nope/secret")])
async def test_unknown_client_is_404(http: httpx.AsyncClient, redis_db: redis.Redis, method: str,
                                     path: str) -> None:
    resp = await http.request(method, path, headers=ADMIN, json={"name": "x"})
    assert_error(resp, 404, "not_found", "No such client.")  # before the body is looked at
    assert list(data_keys(redis_db)) == []


# -- users ------------------------------------------------------------------------------------


async def test_create_and_read_user(http: httpx.AsyncClient, redis_db: redis.Redis) -> None:
    before = int(time.time())
    resp = await http.post("/admin/users", headers=ADMIN,
                           json={"username": "alice", "password": "correct horse", "verified": True})
    created = assert_json(resp, 201)
    assert created == {"username": "alice", "verified": True, "created_at": created["created_at"],
                       "failed_logins": 0, "locked": False}
    assert before <= created["created_at"] <= int(time.time())
    got = assert_json(await http.get("/admin/users/alice", headers=ADMIN), 200)
    assert got == created
    assert_no_secret(got)
    stored = redis_db.get(keys.user("alice"))
    assert stored is not None and b"correct horse" not in stored and b'"$argon2id$' in stored

    duplicate = await http.post("/admin/users", headers=ADMIN,
                                json={"username": "alice", "password": "another password"})
    assert_error(duplicate, 409, "conflict", "A user with that username already exists.")
    assert redis_db.get(keys.user("alice")) == stored
    # The default is unverified.
    bob = assert_json(await http.post("/admin/users", headers=ADMIN,
                                      json={"username": "bob", "password": "12345678"}), 201)
    assert bob["verified"] is False


@pytest.mark.parametrize(("doc", "description"), [
    ({"password": "long enough"}, "'username' is required."),
    ({"username": "carol"}, "'password' must be a string of 8 to 1024 characters."),
    ({"username": "carol", "password": "short"}, "'password' must be a string of 8 to 1024 characters."),
    ({"username": "carol", "password": "x" * 1025},
     "'password' must be a string of 8 to 1024 characters."),
    ({"username": "carol", "password": 12345678}, "'password' must be a string of 8 to 1024 characters."),
    ({"username": "carol", "password": "long enough", "verified": "yes"},
     "'verified' must be true or false."),
    ({"username": "", "password": "long enough"},
     "'username' must be a non-empty string of at most 200 characters."),
])
async def test_create_user_refuses_bad_values(http: httpx.AsyncClient, redis_db: redis.Redis,
                                              doc: dict[str, Any], description: str) -> None:
    resp = await http.post("/admin/users", headers=ADMIN, json=doc)
    assert_error(resp, 400, "invalid_request", description)
    assert list(data_keys(redis_db)) == []


async def test_patch_user_verified_and_password(http: httpx.AsyncClient) -> None:
    client = await new_client(http, require_verified_users=True)
    await new_user(http, verified=False)
    assert_error(await password_token(http, client), 403, "access_denied",
                 "The user is not verified, and this client requires verified users.")
    resp = await http.patch("/admin/users/alice", headers=ADMIN, json={"verified": True})
    view = assert_json(resp, 200)
    assert view == {"username": "alice", "verified": True, "created_at": view["created_at"],
                    "failed_logins": 0, "locked": False}
    assert (await password_token(http, client)).status_code == 200

    resp = await http.patch("/admin/users/alice", headers=ADMIN, json={"password": "new passphrase"})
    assert assert_json(resp, 200) == view
    assert_no_secret(resp.json())
    assert_error(await password_token(http, client), 400, "invalid_grant",
                 "Invalid username or password.")
    assert (await password_token(http, client, password="new passphrase")).status_code == 200


@pytest.mark.parametrize(("doc", "description"), [
    ({"verified": "true"}, "'verified' must be true or false."),
    ({"password": "short"}, "'password' must be a string of 8 to 1024 characters."),
    ({"username": "mallory"}, "Cannot change: username."),
    ({"password_hash": "$argon2id$x"}, "Cannot change: password_hash."),
])
async def test_patch_user_refuses_bad_values(http: httpx.AsyncClient, redis_db: redis.Redis,
                                             doc: dict[str, Any], description: str) -> None:
    await new_user(http)
    stored = redis_db.get(keys.user("alice"))
    resp = await http.patch("/admin/users/alice", headers=ADMIN, json=doc)
    assert_error(resp, 400, "invalid_request", description)
    assert redis_db.get(keys.user("alice")) == stored


async def test_unlock_user(http: httpx.AsyncClient, redis_db: redis.Redis) -> None:
    client = await new_client(http, max_user_login_attempts=3)
    await new_user(http)
    for _ in range(2):
        assert_error(await password_token(http, client, password="wrong password"), 400,
                     "invalid_grant", "Invalid username or password.")
    assert_error(await password_token(http, client, password="wrong password"), 423, "user_locked",
                 "The user is locked after too many failed logins.")
    assert_error(await password_token(http, client), 423, "user_locked",
                 "The user is locked after too many failed logins.")
    got = assert_json(await http.get("/admin/users/alice", headers=ADMIN), 200)
    assert got["failed_logins"] == 3 and got["locked"] is True
    assert redis_db.get(keys.user_failures("alice")) == b"3"

    resp = await http.post("/admin/users/alice/unlock", headers=ADMIN)
    assert resp.status_code == 204 and resp.content == b""
    assert redis_db.exists(keys.user_failures("alice"), keys.user_lock("alice")) == 0
    got = assert_json(await http.get("/admin/users/alice", headers=ADMIN), 200)
    assert got["failed_logins"] == 0 and got["locked"] is False
    assert (await password_token(http, client)).status_code == 200


async def test_delete_user(http: httpx.AsyncClient, redis_db: redis.Redis) -> None:
    client = await new_client(http)
    await new_user(http)
    assert (await password_token(http, client, password="wrong password")).status_code == 400
    resp = await http.delete("/admin/users/alice", headers=ADMIN)
    assert resp.status_code == 204 and resp.content == b""
    assert redis_db.exists(keys.user("alice"), keys.user_failures("alice")) == 0
    assert redis_db.zscore(keys.USERS_INDEX, "alice") is None
    assert_error(await password_token(http, client), 400, "invalid_grant",
                 "Invalid username or password.")
    for method, path in (("GET", "/admin/users/alice"), ("DELETE", "/admin/users/alice"),
                         ("PATCH", "/admin/users/alice"), ("POST", "/admin/users/alice/unlock")):
        assert_error(await http.request(method, path, headers=ADMIN, json={"verified": True}), 404,
                     "not_found", "No such user.")
    # The name is free again.
    await new_user(http, password="fresh password")
    assert (await password_token(http, client, password="fresh password")).status_code == 200


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/admin/clients"), ("PATCH", "/admin/clients/{id}"), ("POST", "/admin/users"),
    ("PATCH", "/admin/users/alice")])
@pytest.mark.parametrize(("body", "description"), [
    (b"{not json", "The body is not valid JSON."),
    (b'{"name": "x",}', "The body is not valid JSON."),
    (b"\xff\xfe", "The body is not valid JSON."),
    (b'["name"]', "The JSON body must be an object."),
    (b'"name"', "The JSON body must be an object."),
])
async def test_bad_json_is_400(http: httpx.AsyncClient, redis_db: redis.Redis, method: str, path: str,
                               body: bytes, description: str) -> None:
    client = await new_client(http)
    await new_user(http)
    before = {k: redis_db.dump(k) for k in data_keys(redis_db)}
    resp = await http.request(method, path.format(id=client["client_id"]), headers={
        **ADMIN, "Content-Type": "application/json"}, content=body)
    assert_error(resp, 400, "invalid_request", description)
    assert {k: redis_db.dump(k) for k in data_keys(redis_db)} == before


async def test_admin_body_size_is_limited(http: httpx.AsyncClient, redis_db: redis.Redis) -> None:
    resp = await http.post("/admin/clients", headers=ADMIN,
                           json={"name": "n", "website": "https://a.example/" + "x" * 70000})
    assert_error(resp, 413, "invalid_request", "The body exceeds 65536 bytes.")
    assert list(data_keys(redis_db)) == []


# -- client authentication methods and keys (RFC 7523) ---------------------------------------

EC = Jwk.generate(alg="ES256", kid="ec-1")
RSA_1024 = Jwk.generate(alg="RS256", kid="small", key_size=1024)
PRIVATE_EC = {**EC.to_dict()}  # with its `d`
PUBLIC_EC = EC.public_jwk().to_dict()
NOT_PUBLIC = ("'jwks' must hold public keys only: a key has the private member(s) d. Register the "
              "public half.")


@pytest.mark.parametrize(("jwks", "description"), [
    ({"keys": [PRIVATE_EC]}, NOT_PUBLIC),
    ({"keys": [{**RSA_1024.to_dict()}]}, "'jwks' must hold public keys only: a key has the private "
     "member(s) d, dp, dq, p, q, qi. Register the public half."),
    ({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "s"}]},
     "'jwks' must hold public keys only: a symmetric (oct) key is a shared secret; use "
     "client_secret_jwt for that."),
    ({"keys": [RSA_1024.public_jwk().to_dict()]}, "'jwks': RSA keys must have at least 2048 bits."),
    ({"keys": [PUBLIC_EC, PUBLIC_EC]}, "'jwks': the kid 'ec-1' is used twice; kids must be unique."),
    ({"keys": [PUBLIC_EC, {k: v for k, v in PUBLIC_EC.items() if k != "kid"}]},
     "'jwks': with several keys every key needs a kid, which assertions name to pick theirs."),
    ({"keys": [{**PUBLIC_EC, "kid": str(i)} for i in range(11)]}, "'jwks' must hold 1 to 10 keys."),
    ({"keys": []}, "'jwks' must hold 1 to 10 keys."),
    ({"keys": [{**PUBLIC_EC, "pad": "x" * 17000}]}, "'jwks' must be at most 16 KB."),
    ([PUBLIC_EC], "'jwks' must be a JWK Set: an object {\"keys\": [...]} (RFC 7517 §5)."),
    ({"keys": [{**PUBLIC_EC, "crv": "P-384"}]}, "'jwks': key type 'EC' curve 'P-384' is not supported; "
     "use RSA (RS256, PS256), EC P-256 (ES256) or OKP Ed25519 (EdDSA)."),
    ({"keys": [{**PUBLIC_EC, "alg": "RS256"}]}, "'jwks': alg 'RS256' does not fit a EC key; use ES256."),
    ({"keys": [{**PUBLIC_EC, "use": "enc"}]},
     "'jwks': a key's 'use' must be \"sig\" (it verifies signatures)."),
    ({"keys": [{**PUBLIC_EC, "x": "AAAA"}]}, None),
], ids=["private-ec", "private-rsa", "oct", "rsa-1024", "dup-kid", "no-kid", "11-keys", "no-keys",
        "too-big", "not-a-set", "p-384", "alg-mismatch", "use-enc", "bad-point"])
async def test_jwks_is_refused_unless_public_usable_keys(http: httpx.AsyncClient, redis_db: redis.Redis,
                                                         jwks: Any, description: str | None) -> None:
    resp = await http.post("/admin/clients", headers=ADMIN, json={
        "name": "n", "token_endpoint_auth_method": "private_key_jwt", "jwks": jwks})
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_request", resp.text
    if description is not None:
        assert resp.json()["error_description"] == description
    else:
        assert resp.json()["error_description"].startswith("'jwks': a key does not parse (")
    assert list(data_keys(redis_db)) == []


async def test_auth_method_switches_keep_drop_or_rotate_the_secret(
        http: httpx.AsyncClient, redis_db: redis.Redis) -> None:
    client = await new_client(http, grant_types=["client_credentials"])
    cid = client["client_id"]
    path = f"/admin/clients/{cid}"

    async def patch(doc: dict[str, Any]) -> httpx.Response:
        return await http.patch(path, headers=ADMIN, json=doc)

    # basic -> post keeps the secret.
    assert assert_json(await patch({"token_endpoint_auth_method": "client_secret_post"}),
                       200)["token_endpoint_auth_method"] == "client_secret_post"
    assert (await cc_token(http, client)).status_code == 200
    # -> client_secret_jwt needs a new secret: refused, naming the rotation; nothing changed.
    stored = redis_db.get(keys.client(cid))
    assert_error(await patch({"token_endpoint_auth_method": "client_secret_jwt"}), 400, "invalid_request",
                 "Switching to client_secret_jwt needs a new secret (the server keeps it sealed to check "
                 f"the assertions): rotate the secret naming the method, POST /admin/clients/{cid}/secret "
                 "with {\"token_endpoint_auth_method\": \"client_secret_jwt\"} (the console's rotation "
                 "does the same); the new secret is shown once.")
    assert redis_db.get(keys.client(cid)) == stored
    rotated = assert_json(await http.post(f"{path}/secret", headers=ADMIN, json={
        "token_endpoint_auth_method": "client_secret_jwt"}), 200, no_store=True)
    assert rotated["token_endpoint_auth_method"] == "client_secret_jwt"
    record = redis_db.get(keys.client(cid))
    assert record is not None and b'"secret_sealed":"' in record
    assert rotated["client_secret"].encode() not in record and "secret_sealed" not in rotated
    # client_secret_jwt -> basic keeps the secret and drops the sealed copy.
    await patch({"token_endpoint_auth_method": "client_secret_basic"})
    record = redis_db.get(keys.client(cid))
    assert record is not None and b'"secret_sealed":null' in record
    resp = await http.post("/oauth/token", auth=(cid, rotated["client_secret"]),
                           data={"grant_type": "client_credentials"})
    assert resp.status_code == 200, resp.text
    # -> private_key_jwt with keys: no secret any more, in the record or accepted.
    done = assert_json(await patch({"token_endpoint_auth_method": "private_key_jwt",
                                    "jwks": {"keys": [PUBLIC_EC]}}), 200)
    assert done["jwks"] == {"keys": [PUBLIC_EC]}
    record = redis_db.get(keys.client(cid))
    assert record is not None and b"$argon2id$" not in record
    resp = await http.post("/oauth/token", auth=(cid, rotated["client_secret"]),
                           data={"grant_type": "client_credentials"})
    assert resp.status_code == 401 and resp.json()["error"] == "invalid_client"
    assert_error(await http.post(f"{path}/secret", headers=ADMIN), 400, "invalid_request",
                 "A private_key_jwt client has no secret. To switch it to a secret, name the method: "
                 "{\"token_endpoint_auth_method\": \"client_secret_basic\"} (or client_secret_post, "
                 "client_secret_jwt).")
    assert_error(await patch({"token_endpoint_auth_method": "client_secret_basic"}), 400, "invalid_request",
                 "Switching to client_secret_basic needs a new secret (the client has none): rotate the "
                 f"secret naming the method, POST /admin/clients/{cid}/secret with "
                 "{\"token_endpoint_auth_method\": \"client_secret_basic\"} (the console's rotation does "
                 "the same); the new secret is shown once.")
    back = assert_json(await http.post(f"{path}/secret", headers=ADMIN, json={
        "token_endpoint_auth_method": "client_secret_basic"}), 200, no_store=True)
    resp = await http.post("/oauth/token", auth=(cid, back["client_secret"]),
                           data={"grant_type": "client_credentials"})
    assert resp.status_code == 200, resp.text
    assert_error(await http.post(f"{path}/secret", headers=ADMIN, json={"name": "x"}), 400,
                 "invalid_request", "Cannot set on a secret rotation: name.")
