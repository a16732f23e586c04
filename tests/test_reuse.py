"""finAPI token reuse: identical requests get the live token while half its lifetime remains."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import redis

from tests.support.api import active, cc_token, introspect, new_client, new_user, password_token
from tests.support.apps import AppFactory
from tests.support.assertions import assert_tokens
from tests.support.config import ADMIN
from tests.support.stored import grant_of, token_key, token_keys
from tokensvc.store import keys

LIFETIME = 3600
Client = dict[str, Any]


def assert_issued(resp: httpx.Response, scope: str | None = "read write",
                  refresh: bool = False) -> dict[str, Any]:
    """A token with some of its lifetime left: a reused one is not fresh."""
    body = assert_tokens(resp, scope=scope, refresh=refresh, expires_in=None)
    assert body["expires_in"] <= LIFETIME
    return body


def forget_locally(http: httpx.AsyncClient) -> None:
    """Drop the worker's own reuse cache. Tests that age or delete records behind the service's
    back in Redis do this too: the cache ages on the worker's clock, and nothing but the
    service itself deletes reuse records in production (announcing it to every instance)."""
    http.app.state.services.tokens._reused.clear()  # type: ignore[attr-defined]


def reuse_key(token: str) -> str:
    return keys.reuse(grant_of(token))


async def cc(http: httpx.AsyncClient, client: Client, scope: str | None = None) -> dict[str, Any]:
    extra = {} if scope is None else {"scope": scope}
    resp = await cc_token(http, client, **extra)
    assert resp.status_code == 200, resp.text
    doc: dict[str, Any] = resp.json()
    return doc


MODES: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any] | None]] = [
    # id, settings, client fields at creation, PATCH body or None
    ("client-by-patch", {}, {}, {"reuse_tokens": True}),
    ("client-at-creation", {}, {"reuse_tokens": True}, None),
    ("global", {"reuse_tokens": True}, {}, None),
    ("client-over-global-off", {"reuse_tokens": False}, {"reuse_tokens": True}, None),
]


@pytest.mark.parametrize(("settings", "fields", "patch"), [m[1:] for m in MODES], ids=[m[0] for m in MODES])
async def test_identical_requests_get_the_same_token(app_factory: AppFactory, redis_db: redis.Redis,
                                                     settings: dict[str, Any], fields: dict[str, Any],
                                                     patch: dict[str, Any] | None) -> None:
    async with app_factory(**settings) as http:
        client = await new_client(http, **fields)
        rs = await new_client(http, name="resource server", introspection="all")
        if patch is not None:
            before = assert_issued(await cc_token(http, client))  # warm cache, reuse still off
            assert assert_issued(await cc_token(http, client))["access_token"] != before["access_token"]
            resp = await http.patch(f"/admin/clients/{client['client_id']}", json=patch, headers=ADMIN)
            assert resp.status_code == 200, resp.text
            assert resp.json()["reuse_tokens"] is True
        known = token_keys(redis_db)
        first = assert_issued(await cc_token(http, client))
        assert first["expires_in"] == LIFETIME
        previous = first["expires_in"]
        for _ in range(3):
            again = assert_issued(await cc_token(http, client))
            assert again["access_token"] == first["access_token"]
            assert previous - 2 <= again["expires_in"] <= previous
            previous = again["expires_in"]
        # One token written, remembered under the reuse key for the token's lifetime.
        assert token_keys(redis_db) - known == {token_key(first["access_token"]).encode()}
        assert LIFETIME * 1000 - 5000 < redis_db.pttl(reuse_key(first["access_token"])) <= LIFETIME * 1000
        assert await active(http, rs, first["access_token"])


SWITCHES: list[tuple[str, bool, bool | None, bool]] = [
    # id, global setting, client setting, reuse expected
    ("default-off", False, None, False),
    ("global-on", True, None, True),
    ("client-on", False, True, True),
    ("client-off-over-global-on", True, False, False),
    ("both-off", False, False, False),
]


@pytest.mark.parametrize(("global_on", "client_on", "reused"), [s[1:] for s in SWITCHES],
                         ids=[s[0] for s in SWITCHES])
async def test_reuse_switch(app_factory: AppFactory, redis_db: redis.Redis, global_on: bool,
                            client_on: bool | None, reused: bool) -> None:
    async with app_factory(reuse_tokens=global_on) as http:
        await new_user(http)
        client = await new_client(http, reuse_tokens=client_on)
        ccs = {assert_issued(await cc_token(http, client))["access_token"] for _ in range(3)}
        pws = {assert_issued(await password_token(http, client), refresh=True)["access_token"]
               for _ in range(3)}
        assert len(ccs) == len(pws) == (1 if reused else 3)
        assert len(token_keys(redis_db)) == (3 if reused else 9)  # cc: 1 or 3; password: 2 or 6
        assert bool(list(redis_db.scan_iter(match="tsv:*:reuse"))) is reused


SCOPE_PAIRS: list[tuple[str, str | None, str | None, bool]] = [
    # id, first request's scope, second request's scope, same token expected
    ("both-default", None, None, True),
    ("default-equals-all-of-them", None, "read write", True),
    ("order-does-not-matter", "read write", "write read", True),
    ("duplicates-do-not-matter", "read", "read read", True),
    ("subset-differs", "read", "read write", False),
    ("disjoint-differs", "read", "write", False),
    ("subset-differs-from-default", "write", None, False),
]


@pytest.mark.parametrize(("first_scope", "second_scope", "same"), [p[1:] for p in SCOPE_PAIRS],
                         ids=[p[0] for p in SCOPE_PAIRS])
async def test_scope_sets_never_share_a_token(app_factory: AppFactory, first_scope: str | None,
                                              second_scope: str | None, same: bool) -> None:
    async with app_factory(reuse_tokens=True) as http:
        client = await new_client(http)
        rs = await new_client(http, name="resource server", introspection="all")
        first = await cc(http, client, first_scope)
        second = await cc(http, client, second_scope)
        assert (first["access_token"] == second["access_token"]) is same
        for body in (first, second):
            info = await introspect(http, rs, body["access_token"])
            assert info["active"] is True and info.get("scope") == body["scope"]
        # And each scope set keeps its own token on the way back.
        assert (await cc(http, client, first_scope))["access_token"] == first["access_token"]
        assert (await cc(http, client, second_scope))["access_token"] == second["access_token"]


@pytest.mark.parametrize("grant", ["client_credentials", "password"])
async def test_concurrent_identical_requests_agree_on_one_token(
        app_factory: AppFactory, redis_db: redis.Redis, grant: str) -> None:
    async with app_factory(reuse_tokens=True) as http:
        await new_user(http)
        client = await new_client(http)
        request = cc_token if grant == "client_credentials" else password_token
        answers = await asyncio.gather(*(request(http, client) for _ in range(20)))
        bodies = [assert_issued(resp, refresh=grant == "password") for resp in answers]
        assert len({b["access_token"] for b in bodies}) == 1
        assert len({b.get("refresh_token") for b in bodies}) == 1
        assert len(token_keys(redis_db)) == (1 if grant == "client_credentials" else 2)


async def test_password_reuse_is_per_user_and_per_client(app_factory: AppFactory,
                                                         redis_db: redis.Redis) -> None:
    async with app_factory(reuse_tokens=True) as http:
        await new_user(http)
        await new_user(http, username="bob", password="bobs password")
        client = await new_client(http)
        other = await new_client(http, name="other", introspection="all")
        alice = assert_issued(await password_token(http, client), refresh=True)
        again = assert_issued(await password_token(http, client), refresh=True)
        assert again["access_token"] == alice["access_token"]
        assert again["refresh_token"] == alice["refresh_token"]
        assert again["expires_in"] <= alice["expires_in"]
        bob = assert_issued(await password_token(http, client, "bob", "bobs password"), refresh=True)
        at_other = assert_issued(await password_token(http, other), refresh=True)
        machine = assert_issued(await cc_token(http, client))
        tokens = [alice["access_token"], bob["access_token"], at_other["access_token"],
                  machine["access_token"]]
        assert len(set(tokens)) == 4
        assert len({grant_of(t) for t in tokens}) == 4
        for token, user in zip(tokens, ("alice", "bob", "alice", None), strict=True):
            assert (await introspect(http, other, token)).get("username") == user
        # A wrong password is refused whatever a live token exists for that user.
        wrong = await password_token(http, client, password="wrong horse")
        assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"


HINTS: list[tuple[str, str | None]] = [("hint-access_token", "access_token"), ("no-hint", None),
                                       ("hint-refresh_token", "refresh_token")]


@pytest.mark.parametrize("hint", [h for _, h in HINTS], ids=[i for i, _ in HINTS])
async def test_a_revoked_token_is_not_handed_out_again(app_factory: AppFactory, redis_db: redis.Redis,
                                                       hint: str | None) -> None:
    async with app_factory(reuse_tokens=True) as http:
        await new_user(http)
        client = await new_client(http)
        rs = await new_client(http, name="resource server", introspection="all")
        first = assert_issued(await password_token(http, client), refresh=True)
        reused = assert_issued(await password_token(http, client), refresh=True)
        assert (reused["access_token"], reused["refresh_token"]) == (first["access_token"],
                                                                     first["refresh_token"])
        token = first["refresh_token"] if hint == "refresh_token" else first["access_token"]
        data = {"token": token, **({} if hint is None else {"token_type_hint": hint})}
        resp = await http.post("/oauth/revoke", data=data,
                               auth=(client["client_id"], client["client_secret"]))
        assert resp.status_code == 200, resp.text
        assert redis_db.exists(reuse_key(first["access_token"])) == 0
        second = assert_issued(await password_token(http, client), refresh=True)
        assert second["access_token"] != first["access_token"]
        assert second["refresh_token"] != first["refresh_token"]
        assert second["expires_in"] == LIFETIME
        assert not await active(http, rs, first["access_token"])
        assert await active(http, rs, second["access_token"])
        assert await active(http, rs, second["refresh_token"])
        # The new token is the one reused from now on.
        assert assert_issued(await password_token(http, client), refresh=True)["access_token"] == \
            second["access_token"]


async def test_a_rotated_refresh_token_is_not_handed_out_again(app_factory: AppFactory) -> None:
    async with app_factory(reuse_tokens=True) as http:
        await new_user(http)
        client = await new_client(http)
        first = assert_issued(await password_token(http, client), refresh=True)
        rotated = await http.post("/oauth/token", data={"grant_type": "refresh_token",
                                                        "refresh_token": first["refresh_token"]},
                                  auth=(client["client_id"], client["client_secret"]))
        assert_issued(rotated, refresh=True)
        second = assert_issued(await password_token(http, client), refresh=True)
        assert second["refresh_token"] != first["refresh_token"]
        assert second["access_token"] != first["access_token"]
        # The pair handed out now works: its refresh token was never used.
        again = await http.post("/oauth/token", data={"grant_type": "refresh_token",
                                                      "refresh_token": second["refresh_token"]},
                                auth=(client["client_id"], client["client_secret"]))
        assert_issued(again, refresh=True)


HALF = LIFETIME * 1000 // 2
AGES: list[tuple[str, int, bool]] = [
    # id, ms the reuse record has left (of LIFETIME), the same token expected
    ("fresh", LIFETIME * 1000, True),
    ("just-over-half-left", HALF + 2000, True),
    ("just-under-half-left", HALF - 2000, False),
    ("nearly-dead", 1000, False),
]


@pytest.mark.parametrize(("left_ms", "same"), [a[1:] for a in AGES], ids=[a[0] for a in AGES])
@pytest.mark.parametrize("grant", ["client_credentials", "password"])
async def test_a_new_token_once_less_than_half_the_lifetime_remains(
        app_factory: AppFactory, redis_db: redis.Redis, left_ms: int, same: bool, grant: str) -> None:
    async with app_factory(reuse_tokens=True) as http:
        await new_user(http)
        client = await new_client(http)
        rs = await new_client(http, name="resource server", introspection="all")
        request = cc_token if grant == "client_credentials" else password_token
        refresh = grant == "password"
        first = assert_issued(await request(http, client), refresh=refresh)
        # Simulate the passing of time on the reuse record rather than sleeping.
        assert redis_db.pexpire(reuse_key(first["access_token"]), left_ms)
        forget_locally(http)
        second = assert_issued(await request(http, client), refresh=refresh)
        if same:
            assert second["access_token"] == first["access_token"]
            assert left_ms // 1000 - 2 <= second["expires_in"] <= left_ms // 1000
            return
        assert second["access_token"] != first["access_token"]
        assert second["expires_in"] == LIFETIME
        assert grant_of(second["access_token"]) == grant_of(first["access_token"])
        assert LIFETIME * 1000 - 5000 < redis_db.pttl(reuse_key(second["access_token"])) <= LIFETIME * 1000
        # The old token is still valid until it expires; the new one is reused from now on.
        assert await active(http, rs, first["access_token"])
        third = assert_issued(await request(http, client), refresh=refresh)
        assert third["access_token"] == second["access_token"]


async def test_reuse_survives_a_vanished_access_token(app_factory: AppFactory,
                                                      redis_db: redis.Redis) -> None:
    """If the access token is gone (expired early, evicted), its reuse record is not trusted."""
    async with app_factory(reuse_tokens=True) as http:
        client = await new_client(http)
        first = await cc(http, client)
        assert redis_db.delete(token_key(first["access_token"])) == 1
        forget_locally(http)
        second = await cc(http, client)
        assert second["access_token"] != first["access_token"]
        assert second["expires_in"] == LIFETIME


async def test_reuse_answers_come_from_the_worker_until_half_life(app_factory: AppFactory,
                                                                  redis_db: redis.Redis) -> None:
    """Identical requests after the first are answered without Redis while half the lifetime
    is left: the reuse record is not read again (its TTL is untouched by them)."""
    async with app_factory(reuse_tokens=True) as http:
        client = await new_client(http)
        first = await cc(http, client)
        key = reuse_key(first["access_token"])
        redis_db.pexpire(key, 10**9)  # a marker: a read through reuse.lua would not change it
        for _ in range(5):
            assert (await cc(http, client))["access_token"] == first["access_token"]
        assert redis_db.pttl(key) > 10**9 - 5000
        # A revocation on any instance is announced, and the next request gets a new token.
        rs = await new_client(http, name="resource server", introspection="all")
        resp = await http.post("/oauth/revoke", data={"token": first["access_token"],
                                                      "token_type_hint": "access_token"},
                               auth=(client["client_id"], client["client_secret"]))
        assert resp.status_code == 200
        second = await cc(http, client)
        assert second["access_token"] != first["access_token"]
        assert await active(http, rs, second["access_token"])
        assert not await active(http, rs, first["access_token"])


async def test_a_revocation_on_one_instance_ends_reuse_on_another(app_factory: AppFactory) -> None:
    async with app_factory(reuse_tokens=True) as one, app_factory(reuse_tokens=True) as two:
        client = await new_client(one)
        first = await cc(one, client)
        assert (await cc(two, client))["access_token"] == first["access_token"]  # cached on two
        resp = await one.post("/oauth/revoke", data={"token": first["access_token"]},
                              auth=(client["client_id"], client["client_secret"]))
        assert resp.status_code == 200
        again = await cc(two, client)
        assert again["access_token"] != first["access_token"]
