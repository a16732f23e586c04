"""RFC 7662 introspection for resource servers."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
import redis

from tests.support.api import auth, cc_token, new_client, new_user, password_token
from tests.support.apps import AppFactory
from tests.support.assertions import assert_json
from tests.support.config import ADMIN
from tests.support.stored import CODEC, expire_now, token_key
from tokensvc.tokens import ACCESS, CODE, REFRESH, TokenCodec, new_grant_id

INACTIVE = {"active": False}


async def inspect(http: httpx.AsyncClient, rs: dict[str, Any], token: str,
                  **extra: str) -> dict[str, Any]:
    resp = await http.post("/oauth/introspect", data={"token": token, **extra}, auth=auth(rs))
    body: dict[str, Any] = assert_json(resp)
    return body


@pytest.fixture
async def rs(http: httpx.AsyncClient) -> dict[str, Any]:
    """A resource server: a confidential client that only introspects."""
    return await new_client(http, name="resource server", scopes=[], introspection="all")


async def test_active_client_credentials_token(http: httpx.AsyncClient, rs: dict[str, Any]) -> None:
    client = await new_client(http)
    before = time.time()
    token = (await cc_token(http, client)).json()["access_token"]
    after = time.time()
    body = await inspect(http, rs, token)
    iat = body["iat"]
    assert int(before) <= iat <= int(after)
    assert body == {
        "active": True,
        "scope": "read write",
        "client_id": client["client_id"],
        "token_type": "Bearer",
        "exp": iat + 3600,
        "iat": iat,
        "sub": client["client_id"],
        "iss": "http://testserver",
    }


async def test_active_user_access_and_refresh_tokens(http: httpx.AsyncClient, rs: dict[str, Any],
                                                     redis_db: redis.Redis) -> None:
    client = await new_client(http)
    await new_user(http)
    before = time.time()
    tokens = (await password_token(http, client, scope="read")).json()
    after = time.time()

    body = await inspect(http, rs, tokens["access_token"])
    iat = body["iat"]
    assert int(before) <= iat <= int(after)
    assert body == {"active": True, "scope": "read", "client_id": client["client_id"],
                    "token_type": "Bearer", "exp": iat + 3600, "iat": iat, "sub": "alice",
                    "iss": "http://testserver", "username": "alice"}
    # The stored record says the same as the answer (and exp matches what Redis will enforce).
    assert 3_599_000 < redis_db.pttl(token_key(tokens["access_token"])) <= 3_600_000

    refresh = await inspect(http, rs, tokens["refresh_token"], token_type_hint="refresh_token")
    assert refresh == {"active": True, "scope": "read", "client_id": client["client_id"],
                       "token_type": "refresh_token", "exp": iat + 14 * 86400, "iat": iat,
                       "sub": "alice", "iss": "http://testserver", "username": "alice"}


async def test_token_without_scope_has_no_scope_member(http: httpx.AsyncClient,
                                                       rs: dict[str, Any]) -> None:
    """RFC 7662 §2.2: scope is a space-separated list; with none granted it is left out,
    as the token response says null (an empty string would read as one empty scope)."""
    client = await new_client(http, scopes=[])
    resp = await cc_token(http, client)
    assert resp.json()["scope"] is None
    body = await inspect(http, rs, resp.json()["access_token"])
    assert body == {"active": True, "client_id": client["client_id"], "token_type": "Bearer",
                    "exp": body["iat"] + 3600, "iat": body["iat"], "sub": client["client_id"],
                    "iss": "http://testserver"}


async def test_the_hint_does_not_change_the_answer(http: httpx.AsyncClient,
                                                   rs: dict[str, Any]) -> None:
    client = await new_client(http)
    token = (await cc_token(http, client)).json()["access_token"]
    plain = await inspect(http, rs, token)
    assert plain["active"] is True
    assert await inspect(http, rs, token, token_type_hint="refresh_token") == plain
    assert await inspect(http, rs, token, token_type_hint="access_token") == plain


async def test_owner_can_introspect_its_own_token_and_json_bodies_work(
        http: httpx.AsyncClient) -> None:
    client = await new_client(http)
    token = (await cc_token(http, client)).json()["access_token"]
    resp = await http.post("/oauth/introspect", json={"token": token, "client_id": client["client_id"],
                                                      "client_secret": client["client_secret"]})
    body = assert_json(resp)
    assert body["active"] is True and body["client_id"] == client["client_id"]


async def test_per_client_lifetime_shows_in_exp(http: httpx.AsyncClient, rs: dict[str, Any]) -> None:
    client = await new_client(http, access_token_ttl=90)
    token = (await cc_token(http, client)).json()["access_token"]
    body = await inspect(http, rs, token)
    assert body["exp"] == body["iat"] + 90


async def test_expired_token_is_inactive(http: httpx.AsyncClient, rs: dict[str, Any],
                                         redis_db: redis.Redis) -> None:
    client = await new_client(http)
    await new_user(http)
    cc = (await cc_token(http, client)).json()["access_token"]
    user = (await password_token(http, client)).json()
    for token in (cc, user["access_token"], user["refresh_token"]):
        assert (await inspect(http, rs, token))["active"] is True
        expire_now(redis_db, token_key(token))
        assert await inspect(http, rs, token) == INACTIVE


async def test_token_with_a_one_second_lifetime_expires(app_factory: AppFactory,
                                                        redis_db: redis.Redis) -> None:
    """The per-client TTL reaches Redis, and Redis's expiry (brought forward rather than waited
    for) ends the token: no test hook in the service."""
    async with app_factory() as http:
        rs = await new_client(http, name="resource server", introspection="all")
        client = await new_client(http, access_token_ttl=1)
        resp = await cc_token(http, client)
        assert resp.json()["expires_in"] == 1
        token = resp.json()["access_token"]
        assert 0 < redis_db.pttl(token_key(token)) <= 1000
        assert (await inspect(http, rs, token))["active"] is True
        expire_now(redis_db, token_key(token))  # what Redis does to it within the second
        assert await inspect(http, rs, token) == INACTIVE


async def test_revoked_token_is_inactive(http: httpx.AsyncClient, rs: dict[str, Any]) -> None:
    client = await new_client(http)
    await new_user(http)
    user = (await password_token(http, client)).json()
    cc = (await cc_token(http, client)).json()["access_token"]
    resp = await http.post("/oauth/revoke", data={"token": cc}, auth=auth(client))
    assert resp.status_code == 200
    assert await inspect(http, rs, cc) == INACTIVE
    resp = await http.post("/oauth/revoke", data={"token": user["refresh_token"]}, auth=auth(client))
    assert resp.status_code == 200
    assert await inspect(http, rs, user["refresh_token"]) == INACTIVE
    assert await inspect(http, rs, user["access_token"]) == INACTIVE


async def test_rotated_refresh_token_is_inactive(http: httpx.AsyncClient, rs: dict[str, Any],
                                                 redis_db: redis.Redis) -> None:
    client = await new_client(http)
    await new_user(http)
    first = (await password_token(http, client)).json()
    second = await http.post("/oauth/token", data={"grant_type": "refresh_token",
                                                   "refresh_token": first["refresh_token"]},
                             auth=auth(client))
    assert second.status_code == 200, second.text
    # The rotated token is still stored (for reuse detection), yet no longer active.
    assert redis_db.exists(token_key(first["refresh_token"])) == 1
    assert await inspect(http, rs, first["refresh_token"]) == INACTIVE
    new = await inspect(http, rs, second.json()["refresh_token"])
    assert new["active"] is True and new["username"] == "alice"
    # The access token issued with the first refresh token lives out its own lifetime.
    assert (await inspect(http, rs, first["access_token"]))["active"] is True


@pytest.mark.parametrize("token", [
    "garbage",
    "tsv_at_",
    "x" * 5000,
    "tsv_rt_" + "A" * 63,
    CODEC.mint(ACCESS, new_grant_id()).token,
    CODEC.mint(REFRESH, new_grant_id()).token,
    CODEC.mint(CODE, new_grant_id()).token,
    TokenCodec(["another-server-key-0123456789abcdef"]).mint(ACCESS, new_grant_id()).token,
], ids=["garbage", "prefix", "long", "bad-tag", "never-issued-at", "never-issued-rt", "code",
        "other-key"])
async def test_unknown_or_forged_token_is_inactive(http: httpx.AsyncClient, rs: dict[str, Any],
                                                   token: str) -> None:
    assert await inspect(http, rs, token) == INACTIVE


async def test_tampered_copy_of_a_live_token_is_inactive(http: httpx.AsyncClient,
                                                         rs: dict[str, Any]) -> None:
    client = await new_client(http)
    token = (await cc_token(http, client)).json()["access_token"]
    i = 40
    tampered = token[:i] + ("B" if token[i] != "B" else "C") + token[i + 1:]
    assert await inspect(http, rs, tampered) == INACTIVE
    assert (await inspect(http, rs, token))["active"] is True


async def test_token_of_a_deleted_client_is_inactive(http: httpx.AsyncClient,
                                                     rs: dict[str, Any]) -> None:
    client = await new_client(http)
    token = (await cc_token(http, client)).json()["access_token"]
    assert (await inspect(http, rs, token))["active"] is True
    assert (await http.delete(f"/admin/clients/{client['client_id']}", headers=ADMIN)).status_code == 204
    assert await inspect(http, rs, token) == INACTIVE


def assert_invalid_client(resp: httpx.Response, description: str, basic: bool) -> None:
    body = assert_json(resp, 401)
    assert body == {"error": "invalid_client", "error_description": description, "message": description}
    assert resp.headers.get("www-authenticate") == ('Basic realm="tokensvc"' if basic else None)


async def test_requires_client_authentication(http: httpx.AsyncClient, rs: dict[str, Any]) -> None:
    client = await new_client(http)
    token = (await cc_token(http, client)).json()["access_token"]

    none = await http.post("/oauth/introspect", data={"token": token})
    assert_invalid_client(none, "Client authentication is required.", basic=True)

    wrong_basic = await http.post("/oauth/introspect", data={"token": token},
                                  auth=(rs["client_id"], "tsv_cs_wrong"))
    assert_invalid_client(wrong_basic, "Client authentication failed.", basic=True)

    wrong_post = await http.post("/oauth/introspect", data={
        "token": token, "client_id": rs["client_id"], "client_secret": "tsv_cs_wrong"})
    assert_invalid_client(wrong_post, "Client authentication failed.", basic=False)

    unknown = await http.post("/oauth/introspect", data={"token": token},
                              auth=("no-such-client", "whatever"))
    assert_invalid_client(unknown, "Client authentication failed.", basic=True)

    id_only = await http.post("/oauth/introspect", data={"token": token, "client_id": rs["client_id"]})
    assert_invalid_client(id_only, "This client must authenticate with its secret.", basic=False)

    bearer = await http.post("/oauth/introspect", data={"token": token},
                             headers={"Authorization": f"Bearer {token}"})
    assert_invalid_client(bearer, "Client authentication is required.", basic=True)


async def test_public_client_may_not_introspect(http: httpx.AsyncClient) -> None:
    public = await new_client(http, name="spa", token_endpoint_auth_method="none")
    await new_user(http)
    issued = await http.post("/oauth/token", data={"grant_type": "password",
                                                   "client_id": public["client_id"],
                                                   "username": "alice", "password": "correct horse"})
    assert issued.status_code == 200, issued.text
    resp = await http.post("/oauth/introspect", data={"token": issued.json()["access_token"],
                                                      "client_id": public["client_id"]})
    assert_invalid_client(resp, "Public clients may not use this endpoint.", basic=False)


async def test_missing_token_and_bad_hint(http: httpx.AsyncClient, rs: dict[str, Any]) -> None:
    resp = await http.post("/oauth/introspect", data={}, auth=auth(rs))
    body = assert_json(resp, 400)
    assert body == {"error": "invalid_request", "error_description": "token is required.",
                    "message": "token is required."}
    resp = await http.post("/oauth/introspect", data={"token": "x", "token_type_hint": "id_token"},
                           auth=auth(rs))
    body = assert_json(resp, 400)
    description = "token_type_hint must be access_token or refresh_token."
    assert body == {"error": "unsupported_token_type", "error_description": description,
                    "message": description}
