"""OmniFund token login (`POST /login`) and `GET /oauth/userinfo`: who holds this bearer token."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
import redis

from tests.support.api import cc_token, new_client, password_token
from tests.support.assertions import assert_error, assert_json, bearer_challenge
from tests.support.config import ADMIN
from tests.support.stored import CODEC, expire_now, token_key
from tokensvc.errors import DPOP_CHALLENGE
from tokensvc.tokens import ACCESS, CODE, TokenCodec, new_grant_id

INVALID = "The access token is invalid, expired or revoked."
MISSING = "An access token is required (Authorization: Bearer ... or DPoP ...)."
ENDPOINTS = [("POST", "/login"), ("GET", "/oauth/userinfo")]


async def call(http: httpx.AsyncClient, method: str, path: str,
               authorization: str | None) -> httpx.Response:
    headers = {} if authorization is None else {"Authorization": authorization}
    return await http.request(method, path, headers=headers)


def assert_principal(resp: httpx.Response, expected: dict[str, Any]) -> None:
    assert assert_json(resp) == expected
    assert "www-authenticate" not in resp.headers


def assert_invalid_token(resp: httpx.Response, description: str = INVALID) -> None:
    assert_error(resp, 401, "invalid_token", description, bearer_challenge(description))


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_user_token_gives_the_user_principal(http: httpx.AsyncClient, client: dict[str, Any],
                                                   method: str, path: str) -> None:
    before = int(time.time())
    token = (await password_token(http, client, scope="read")).json()["access_token"]
    after = int(time.time())
    resp = await call(http, method, path, f"Bearer {token}")
    iat = resp.json()["iat"]
    assert before <= iat <= after
    assert_principal(resp, {"type": "user", "sub": "alice", "client_id": client["client_id"],
                            "scope": "read", "iat": iat, "exp": iat + 3600, "username": "alice"})


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_client_token_gives_the_client_principal(http: httpx.AsyncClient,
                                                       client: dict[str, Any],
                                                       method: str, path: str) -> None:
    token = (await cc_token(http, client)).json()["access_token"]
    resp = await call(http, method, path, f"Bearer {token}")
    iat = resp.json()["iat"]
    assert_principal(resp, {"type": "client", "sub": client["client_id"],
                            "client_id": client["client_id"], "scope": "read write", "iat": iat,
                            "exp": iat + 3600})


async def test_token_without_scope_says_null(http: httpx.AsyncClient) -> None:
    client = await new_client(http, scopes=[], access_token_ttl=120)
    token = (await cc_token(http, client)).json()["access_token"]
    resp = await call(http, "POST", "/login", f"Bearer {token}")
    iat = resp.json()["iat"]
    assert_principal(resp, {"type": "client", "sub": client["client_id"],
                            "client_id": client["client_id"], "scope": None, "iat": iat,
                            "exp": iat + 120})


async def test_scheme_is_case_insensitive(http: httpx.AsyncClient, client: dict[str, Any]) -> None:
    """RFC 7235 §2.1: the auth scheme is case-insensitive."""
    token = (await cc_token(http, client)).json()["access_token"]
    for scheme in ("bearer", "BEARER"):
        resp = await call(http, "POST", "/login", f"{scheme} {token}")
        assert resp.status_code == 200, resp.text


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest.mark.parametrize("authorization", [None, "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Token abc",
                                           "DPoP", "DPoP "])
async def test_missing_token(http: httpx.AsyncClient, method: str, path: str,
                             authorization: str | None) -> None:
    """RFC 9449 §7.2: an endpoint that takes both schemes offers both when none was used."""
    assert_error(await call(http, method, path, authorization), 401, "invalid_token", MISSING,
                 f"{bearer_challenge(MISSING)}, {DPOP_CHALLENGE}")


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest.mark.parametrize("token", [
    "garbage",
    "tsv_at_",
    "tsv_at_" + "A" * 63,
    CODEC.mint(ACCESS, new_grant_id()).token,
    CODEC.mint(CODE, new_grant_id()).token,
    TokenCodec(["another-server-key-0123456789abcdef"]).mint(ACCESS, new_grant_id()).token,
], ids=["garbage", "prefix", "bad-tag", "never-issued", "code", "other-key"])
async def test_garbage_or_forged_token(http: httpx.AsyncClient, method: str, path: str,
                                       token: str) -> None:
    assert_invalid_token(await call(http, method, path, f"Bearer {token}"))


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_expired_token(http: httpx.AsyncClient, client: dict[str, Any], redis_db: redis.Redis,
                             method: str, path: str) -> None:
    token = (await password_token(http, client)).json()["access_token"]
    assert (await call(http, method, path, f"Bearer {token}")).status_code == 200
    expire_now(redis_db, token_key(token))
    assert_invalid_token(await call(http, method, path, f"Bearer {token}"))


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_revoked_token(http: httpx.AsyncClient, client: dict[str, Any], method: str,
                             path: str) -> None:
    user = (await password_token(http, client)).json()
    cc = (await cc_token(http, client)).json()["access_token"]
    auth = (client["client_id"], client["client_secret"])
    for token, revoked in ((cc, cc), (user["access_token"], user["refresh_token"])):
        assert (await call(http, method, path, f"Bearer {token}")).status_code == 200
        resp = await http.post("/oauth/revoke", data={"token": revoked}, auth=auth)
        assert resp.status_code == 200
        assert_invalid_token(await call(http, method, path, f"Bearer {token}"))


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_token_of_a_deleted_client(http: httpx.AsyncClient, client: dict[str, Any],
                                         method: str, path: str) -> None:
    token = (await password_token(http, client)).json()["access_token"]
    assert (await call(http, method, path, f"Bearer {token}")).status_code == 200
    deleted = await http.delete(f"/admin/clients/{client['client_id']}", headers=ADMIN)
    assert deleted.status_code == 204
    assert_invalid_token(await call(http, method, path, f"Bearer {token}"))


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_refresh_token_as_bearer(http: httpx.AsyncClient, client: dict[str, Any], method: str,
                                       path: str) -> None:
    user = (await password_token(http, client)).json()
    assert_invalid_token(await call(http, method, path, f"Bearer {user['refresh_token']}"))
    # ... and the refresh token itself is unharmed.
    resp = await http.post("/oauth/token", data={"grant_type": "refresh_token",
                                                 "refresh_token": user["refresh_token"]},
                           auth=(client["client_id"], client["client_secret"]))
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize(("method", "path", "allow"),
                         [("GET", "/login", "POST"), ("POST", "/oauth/userinfo", "GET, HEAD")])
async def test_wrong_method_is_405(http: httpx.AsyncClient, method: str, path: str,
                                   allow: str) -> None:
    resp = await http.request(method, path)
    assert resp.status_code == 405
    assert {m.strip() for m in resp.headers["allow"].split(",")} == set(allow.split(", "))
    assert resp.json() == {"error": "method_not_allowed", "error_description": "Method Not Allowed",
                           "message": "Method Not Allowed"}
