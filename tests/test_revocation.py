"""RFC 7009 revocation with finAPI's hint semantics (API.md "Revocation semantics")."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import redis

from tests.support.api import active, auth, cc_token, new_client, new_user, password_token, refresh
from tests.support.apps import ON_SINGLE_AND_CLUSTER, AppFactory
from tests.support.assertions import assert_error, bearer_challenge
from tests.support.config import ADMIN
from tests.support.stored import CODEC, expire_now, grant_of, snapshot, token_key
from tokensvc.store import keys
from tokensvc.tokens import ACCESS, CODE, TokenCodec, new_grant_id

BAD_BEARER = bearer_challenge("The access token is invalid, expired or revoked.")

pytestmark = ON_SINGLE_AND_CLUSTER


def grant_keys(r: redis.Redis, grant_id: str) -> set[bytes]:
    return set(r.scan_iter(match=f"tsv:{{g:{grant_id}}}:*", count=1000))


def assert_revoked_ok(resp: httpx.Response) -> None:
    """RFC 7009 §2.2: 200, and nothing else to say."""
    assert resp.status_code == 200, resp.text
    assert resp.content == b""
    assert resp.headers.get("content-length") == "0"
    assert "www-authenticate" not in resp.headers


async def user_grant(http: httpx.AsyncClient, client: dict[str, Any]) -> tuple[str, str, str]:
    """A password grant refreshed once: (first access token, second access token, live refresh token)."""
    first = await password_token(http, client)
    assert first.status_code == 200, first.text
    second = await refresh(http, client, first.json()["refresh_token"])
    assert second.status_code == 200, second.text
    at1, at2, rt2 = first.json()["access_token"], second.json()["access_token"], \
        second.json()["refresh_token"]
    assert grant_of(at1) == grant_of(at2) == grant_of(rt2)
    return at1, at2, rt2


async def test_hint_access_token_revokes_only_that_access_token(
        http: httpx.AsyncClient, redis_db: redis.Redis,
        parties: tuple[dict[str, Any], dict[str, Any]]) -> None:
    client, rs = parties
    at1, at2, rt2 = await user_grant(http, client)
    index = keys.grant_index(grant_of(at2)).encode()
    assert token_key(at2).encode() in redis_db.smembers(index)

    resp = await http.post("/oauth/revoke", data={"token": at2, "token_type_hint": "access_token"},
                           auth=auth(client))
    assert_revoked_ok(resp)

    assert redis_db.exists(token_key(at2)) == 0
    assert token_key(at2).encode() not in redis_db.smembers(index)
    assert not await active(http, rs, at2)
    # The sibling access token and the refresh token of the grant live on.
    assert await active(http, rs, at1)
    assert await active(http, rs, rt2)
    login = await http.post("/login", headers={"Authorization": f"Bearer {at1}"})
    assert login.status_code == 200, login.text
    again = await refresh(http, client, rt2)
    assert again.status_code == 200, again.text


async def test_hint_refresh_token_revokes_it_and_every_access_token_of_the_grant(
        http: httpx.AsyncClient, redis_db: redis.Redis,
        parties: tuple[dict[str, Any], dict[str, Any]]) -> None:
    client, rs = parties
    at1, at2, rt2 = await user_grant(http, client)
    other = (await password_token(http, client)).json()  # another grant of the same user
    assert grant_keys(redis_db, grant_of(rt2))

    resp = await http.post("/oauth/revoke", data={"token": rt2, "token_type_hint": "refresh_token"},
                           auth=auth(client))
    assert_revoked_ok(resp)

    assert grant_keys(redis_db, grant_of(rt2)) == set()
    for token in (at1, at2, rt2):
        assert not await active(http, rs, token)
    replay = await refresh(http, client, rt2)
    assert_error(replay, 400, "invalid_grant", "The refresh token is invalid, expired or revoked.")
    # Another grant is another grant.
    assert await active(http, rs, other["access_token"])
    assert await active(http, rs, other["refresh_token"])


@pytest.mark.parametrize("which", ["access", "refresh"])
async def test_no_hint_revokes_every_token_of_the_grant(
        http: httpx.AsyncClient, redis_db: redis.Redis,
        parties: tuple[dict[str, Any], dict[str, Any]], which: str) -> None:
    client, rs = parties
    at1, at2, rt2 = await user_grant(http, client)
    other = (await password_token(http, client)).json()

    resp = await http.post("/oauth/revoke", data={"token": at1 if which == "access" else rt2},
                           auth=auth(client))
    assert_revoked_ok(resp)

    assert grant_keys(redis_db, grant_of(at1)) == set()
    for token in (at1, at2, rt2):
        assert not await active(http, rs, token)
    assert await active(http, rs, other["access_token"])
    assert await active(http, rs, other["refresh_token"])


async def test_revoking_a_client_credentials_token(
        http: httpx.AsyncClient, redis_db: redis.Redis,
        parties: tuple[dict[str, Any], dict[str, Any]]) -> None:
    client, rs = parties
    first = (await cc_token(http, client)).json()["access_token"]
    second = (await cc_token(http, client)).json()["access_token"]
    resp = await http.post("/oauth/revoke", data={"token": first, "token_type_hint": "access_token"},
                           auth=auth(client))
    assert_revoked_ok(resp)
    assert redis_db.exists(token_key(first)) == 0
    assert not await active(http, rs, first)
    assert await active(http, rs, second)


def _forged() -> dict[str, str]:
    real_shape = CODEC.mint(ACCESS, new_grant_id()).token  # well formed and signed, never issued
    other_key = TokenCodec(["another-server-key-0123456789abcdef"]).mint(ACCESS, new_grant_id()).token
    return {
        "garbage": "not-a-token",
        "prefix-only": "tsv_at_",
        "never-issued": real_shape,
        "other-server-key": other_key,
        "code": CODEC.mint(CODE, new_grant_id()).token,
        "too-long": real_shape + "A",
        "non-ascii": "tsv_at_" + "é" * 63,
    }


@pytest.mark.parametrize("name", list(_forged()))
@pytest.mark.parametrize("hint", [None, "access_token", "refresh_token"])
async def test_unknown_malformed_or_forged_token_is_200_and_changes_nothing(
        http: httpx.AsyncClient, redis_db: redis.Redis,
        parties: tuple[dict[str, Any], dict[str, Any]], name: str, hint: str | None) -> None:
    client, rs = parties
    at1, at2, rt2 = await user_grant(http, client)
    token = _forged()[name]
    before = snapshot(redis_db)

    data = {"token": token} if hint is None else {"token": token, "token_type_hint": hint}
    resp = await http.post("/oauth/revoke", data=data, auth=auth(client))
    assert_revoked_ok(resp)

    assert snapshot(redis_db) == before
    for live in (at1, at2, rt2):
        assert await active(http, rs, live)


async def test_tampered_copy_of_a_live_token_changes_nothing(
        http: httpx.AsyncClient, redis_db: redis.Redis,
        parties: tuple[dict[str, Any], dict[str, Any]]) -> None:
    """Same grant id, other body: the tag refuses it before Redis is asked."""
    client, rs = parties
    at1, at2, rt2 = await user_grant(http, client)
    middle = 7 + 30
    tampered = rt2[:middle] + ("A" if rt2[middle] != "A" else "B") + rt2[middle + 1:]
    assert CODEC.parse(tampered) is None
    before = snapshot(redis_db)
    resp = await http.post("/oauth/revoke", data={"token": tampered}, auth=auth(client))
    assert_revoked_ok(resp)
    assert snapshot(redis_db) == before
    assert await active(http, rs, rt2)


@pytest.mark.parametrize("hint", [None, "access_token", "refresh_token"])
@pytest.mark.parametrize("which", ["access", "refresh"])
async def test_a_client_cannot_revoke_another_clients_token(
        http: httpx.AsyncClient, redis_db: redis.Redis,
        parties: tuple[dict[str, Any], dict[str, Any]], hint: str | None, which: str) -> None:
    client, rs = parties
    at1, at2, rt2 = await user_grant(http, client)
    token = at2 if which == "access" else rt2
    before = snapshot(redis_db)

    data = {"token": token} if hint is None else {"token": token, "token_type_hint": hint}
    resp = await http.post("/oauth/revoke", data=data, auth=auth(rs))
    assert_error(resp, 400, "unauthorized_client", "The token was not issued to this client.")

    assert snapshot(redis_db) == before
    for live in (at1, at2, rt2):
        assert await active(http, rs, live)


@pytest.mark.parametrize("where", ["query", "form", "json"])
async def test_finapi_bearer_revokes_a_user_refresh_token_of_the_same_client(
        http: httpx.AsyncClient, redis_db: redis.Redis,
        parties: tuple[dict[str, Any], dict[str, Any]], where: str) -> None:
    client, rs = parties
    own = (await cc_token(http, client)).json()["access_token"]
    at1, at2, rt2 = await user_grant(http, client)
    other = (await password_token(http, client)).json()
    params = {"token": rt2, "token_type_hint": "refresh_token"}
    headers = {"Authorization": f"Bearer {own}"}

    if where == "query":
        resp = await http.post("/oauth/revoke", params=params, headers=headers)
    elif where == "form":
        resp = await http.post("/oauth/revoke", data=params, headers=headers)
    else:
        resp = await http.post("/oauth/revoke", json=params, headers=headers)
    assert_revoked_ok(resp)

    assert grant_keys(redis_db, grant_of(rt2)) == set()
    for token in (at1, at2, rt2):
        assert not await active(http, rs, token)
    # The caller's own token and the user's other grant are untouched.
    assert await active(http, rs, own)
    assert await active(http, rs, other["refresh_token"])


async def test_finapi_user_bearer_reaches_only_that_users_tokens(
        http: httpx.AsyncClient, redis_db: redis.Redis,
        parties: tuple[dict[str, Any], dict[str, Any]]) -> None:
    client, rs = parties
    await new_user(http, "bob")
    alice = (await password_token(http, client)).json()
    alice_other = (await password_token(http, client)).json()
    bob = (await password_token(http, client, username="bob")).json()
    headers = {"Authorization": f"Bearer {alice['access_token']}"}
    before = snapshot(redis_db)

    refused = await http.post("/oauth/revoke", params={"token": bob["refresh_token"]}, headers=headers)
    assert_error(refused, 400, "unauthorized_client", "The token was not issued to this client.")
    assert snapshot(redis_db) == before
    assert await active(http, rs, bob["refresh_token"])

    resp = await http.post("/oauth/revoke", params={"token": alice_other["refresh_token"],
                                                    "token_type_hint": "refresh_token"},
                           headers=headers)
    assert_revoked_ok(resp)
    assert not await active(http, rs, alice_other["refresh_token"])
    assert not await active(http, rs, alice_other["access_token"])
    assert await active(http, rs, alice["access_token"])


async def test_a_wrong_hint_does_not_change_what_the_token_is(
        http: httpx.AsyncClient, redis_db: redis.Redis,
        parties: tuple[dict[str, Any], dict[str, Any]]) -> None:
    """RFC 7009 §2.1: the hint only speeds the lookup. A refresh token hinted as an access token
    still takes its grant with it; an access token hinted as a refresh token goes alone."""
    client, rs = parties
    at1, at2, rt2 = await user_grant(http, client)
    resp = await http.post("/oauth/revoke", data={"token": at2, "token_type_hint": "refresh_token"},
                           auth=auth(client))
    assert_revoked_ok(resp)
    assert not await active(http, rs, at2)
    assert await active(http, rs, at1) and await active(http, rs, rt2)

    resp = await http.post("/oauth/revoke", data={"token": rt2, "token_type_hint": "access_token"},
                           auth=auth(client))
    assert_revoked_ok(resp)
    assert grant_keys(redis_db, grant_of(rt2)) == set()
    assert not await active(http, rs, at1) and not await active(http, rs, rt2)


async def test_finapi_bearer_of_another_client_is_refused(
        http: httpx.AsyncClient, redis_db: redis.Redis,
        parties: tuple[dict[str, Any], dict[str, Any]]) -> None:
    client, rs = parties
    foreign = (await cc_token(http, rs)).json()["access_token"]
    at1, at2, rt2 = await user_grant(http, client)
    before = snapshot(redis_db)
    resp = await http.post("/oauth/revoke", params={"token": rt2, "token_type_hint": "refresh_token"},
                           headers={"Authorization": f"Bearer {foreign}"})
    assert_error(resp, 400, "unauthorized_client", "The token was not issued to this client.")
    assert snapshot(redis_db) == before
    assert await active(http, rs, rt2)


async def test_finapi_token_in_both_query_and_body_is_invalid_request(
        http: httpx.AsyncClient, redis_db: redis.Redis,
        parties: tuple[dict[str, Any], dict[str, Any]]) -> None:
    client, rs = parties
    own = (await cc_token(http, client)).json()["access_token"]
    at1, at2, rt2 = await user_grant(http, client)
    before = snapshot(redis_db)
    resp = await http.post("/oauth/revoke", params={"token": rt2}, data={"token": rt2},
                           headers={"Authorization": f"Bearer {own}"})
    assert_error(resp, 400, "invalid_request", "The parameter 'token' was sent more than once.")
    assert snapshot(redis_db) == before


@pytest.mark.parametrize("kind", ["garbage", "revoked", "refresh-token", "other-key", "expired"])
async def test_invalid_bearer_is_401_invalid_token(
        http: httpx.AsyncClient, redis_db: redis.Redis,
        parties: tuple[dict[str, Any], dict[str, Any]], kind: str) -> None:
    client, rs = parties
    at1, at2, rt2 = await user_grant(http, client)
    own = (await cc_token(http, client)).json()["access_token"]
    if kind == "garbage":
        bearer = "garbage"
    elif kind == "revoked":
        revoked = await http.post("/oauth/revoke", data={"token": own}, auth=auth(client))
        assert_revoked_ok(revoked)
        bearer = own
    elif kind == "refresh-token":
        bearer = rt2
    elif kind == "other-key":
        bearer = TokenCodec(["another-server-key-0123456789abcdef"]).mint(ACCESS, new_grant_id()).token
    else:
        expire_now(redis_db, token_key(own))
        bearer = own
    before = snapshot(redis_db)

    resp = await http.post("/oauth/revoke", params={"token": rt2, "token_type_hint": "refresh_token"},
                           headers={"Authorization": f"Bearer {bearer}"})
    assert_error(resp, 401, "invalid_token", "The access token is invalid, expired or revoked.",
                 BAD_BEARER)
    assert snapshot(redis_db) == before
    assert await active(http, rs, rt2)


@pytest.mark.parametrize("hint", ["id_token", "ACCESS_TOKEN", "authorization_code"])
async def test_unsupported_token_type_hint(
        http: httpx.AsyncClient, redis_db: redis.Redis,
        parties: tuple[dict[str, Any], dict[str, Any]], hint: str) -> None:
    client, rs = parties
    at1, at2, rt2 = await user_grant(http, client)
    before = snapshot(redis_db)
    resp = await http.post("/oauth/revoke", data={"token": at2, "token_type_hint": hint},
                           auth=auth(client))
    assert_error(resp, 400, "unsupported_token_type",
                 "token_type_hint must be access_token or refresh_token.")
    assert snapshot(redis_db) == before
    assert await active(http, rs, at2)


@pytest.mark.parametrize("data", [{}, {"token": ""}, {"token_type_hint": "access_token"}])
async def test_missing_token_is_invalid_request(
        http: httpx.AsyncClient, parties: tuple[dict[str, Any], dict[str, Any]],
        data: dict[str, str]) -> None:
    client, _ = parties
    resp = await http.post("/oauth/revoke", data=data, auth=auth(client))
    assert_error(resp, 400, "invalid_request", "token is required.")


async def test_revocation_requires_client_authentication(
        http: httpx.AsyncClient, redis_db: redis.Redis,
        parties: tuple[dict[str, Any], dict[str, Any]]) -> None:
    client, rs = parties
    at1, at2, rt2 = await user_grant(http, client)
    before = snapshot(redis_db)
    none = await http.post("/oauth/revoke", data={"token": rt2})
    assert_error(none, 401, "invalid_client", "Client authentication is required.",
                 'Basic realm="tokensvc"')
    wrong = await http.post("/oauth/revoke", data={"token": rt2},
                            auth=(client["client_id"], "tsv_cs_wrong"))
    assert_error(wrong, 401, "invalid_client", "Client authentication failed.", 'Basic realm="tokensvc"')
    # A confidential client cannot pass itself off as public by leaving the secret out.
    no_secret = await http.post("/oauth/revoke", data={"token": rt2, "client_id": client["client_id"]})
    assert_error(no_secret, 401, "invalid_client", "This client must authenticate with its secret.")
    # The wrong secret was counted toward the client's throttling (tests/test_throttling.py);
    # nothing else changed.
    assert redis_db.getdel(keys.client_auth_failures(client["client_id"])) == b"1"
    assert snapshot(redis_db) == before
    assert await active(http, rs, rt2)


async def test_public_client_revokes_its_own_tokens_with_client_id_only(
        http: httpx.AsyncClient, redis_db: redis.Redis,
        parties: tuple[dict[str, Any], dict[str, Any]]) -> None:
    confidential, rs = parties
    public = await new_client(http, name="spa", token_endpoint_auth_method="none")
    assert "client_secret" not in public
    issued = await http.post("/oauth/token", data={
        "grant_type": "password", "client_id": public["client_id"], "username": "alice",
        "password": "correct horse"})
    assert issued.status_code == 200, issued.text
    tokens = issued.json()
    foreign = (await password_token(http, confidential)).json()

    # Not another client's token, though.
    refused = await http.post("/oauth/revoke", data={"token": foreign["refresh_token"],
                                                     "client_id": public["client_id"]})
    assert_error(refused, 400, "unauthorized_client", "The token was not issued to this client.")
    assert await active(http, rs, foreign["refresh_token"])

    resp = await http.post("/oauth/revoke", data={"token": tokens["refresh_token"],
                                                  "token_type_hint": "refresh_token",
                                                  "client_id": public["client_id"]})
    assert_revoked_ok(resp)
    assert grant_keys(redis_db, grant_of(tokens["refresh_token"])) == set()
    assert not await active(http, rs, tokens["access_token"])
    assert not await active(http, rs, tokens["refresh_token"])


async def test_deleting_a_client_ends_all_its_tokens_at_once(
        http: httpx.AsyncClient, parties: tuple[dict[str, Any], dict[str, Any]]) -> None:
    client, rs = parties
    own = (await cc_token(http, client)).json()["access_token"]
    at1, at2, rt2 = await user_grant(http, client)
    survivor = (await password_token(http, rs)).json()
    for token in (own, at1, at2, rt2):
        assert await active(http, rs, token)
    # The client's cache entry is warm on this instance: its secret was just verified.
    warm = await http.post("/login", headers={"Authorization": f"Bearer {own}"})
    assert warm.status_code == 200, warm.text

    deleted = await http.delete(f"/admin/clients/{client['client_id']}", headers=ADMIN)
    assert deleted.status_code == 204, deleted.text

    for token in (own, at1, at2, rt2):
        assert not await active(http, rs, token)
    for token in (own, at2):
        login = await http.post("/login", headers={"Authorization": f"Bearer {token}"})
        assert_error(login, 401, "invalid_token", "The access token is invalid, expired or revoked.",
                     BAD_BEARER)
    again = await refresh(http, client, rt2)
    assert_error(again, 401, "invalid_client", "Client authentication failed.", 'Basic realm="tokensvc"')
    new = await cc_token(http, client)
    assert_error(new, 401, "invalid_client", "Client authentication failed.")
    # Other clients' tokens are not touched.
    assert await active(http, rs, survivor["access_token"])
    assert await active(http, rs, survivor["refresh_token"])


async def test_revoked_access_token_with_reuse_is_not_handed_out_again(
        app_factory: AppFactory, redis_db: redis.Redis) -> None:
    """finAPI reuse: once revoked, an identical request gets a fresh token, not the dead one."""
    async with app_factory(reuse_tokens=True) as http:
        client = await new_client(http)
        rs = await new_client(http, name="resource server", introspection="all")
        first = (await cc_token(http, client)).json()["access_token"]
        assert (await cc_token(http, client)).json()["access_token"] == first
        resp = await http.post("/oauth/revoke", data={"token": first, "token_type_hint": "access_token"},
                               auth=auth(client))
        assert_revoked_ok(resp)
        assert redis_db.exists(keys.reuse(grant_of(first))) == 0
        second = (await cc_token(http, client)).json()["access_token"]
        assert second != first
        assert not await active(http, rs, first)
        assert await active(http, rs, second)

