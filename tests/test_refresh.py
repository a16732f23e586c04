"""RFC 6749 §6 refresh with rotation and reuse detection (RFC 9700 §4.14.2)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis

from tests.support.api import active, introspect, new_client, new_user, password_token, refresh
from tests.support.apps import AppFactory
from tests.support.assertions import assert_error, assert_tokens
from tests.support.config import ADMIN
from tests.support.stored import CODEC, grant_of, snapshot, token_key
from tokensvc.store import keys
from tokensvc.tokens import CODE, REFRESH, TokenCodec

INVALID = "The refresh token is invalid, expired or revoked."
REUSED = "The refresh token was already used; the grant has been revoked."
FOREIGN = "The refresh token was issued to another client."
Client = dict[str, Any]


def assert_issued(resp: httpx.Response, scope: str | None = "read write",
                  expires_in: int = 3600) -> dict[str, Any]:
    return assert_tokens(resp, scope=scope, expires_in=expires_in)


def command_calls(r: redis.Redis) -> dict[str, int]:
    """Calls per Redis command so far, leaving out this probe's INFO and health-check PINGs."""
    stats: dict[str, dict[str, int]] = r.info("commandstats")
    return {name: int(s["calls"]) for name, s in stats.items()
            if name not in ("cmdstat_info", "cmdstat_ping")}


async def start(http: httpx.AsyncClient, client: Client, **extra: str) -> dict[str, Any]:
    return assert_issued(await password_token(http, client, **extra), extra.get("scope", "read write"))


async def test_rotation(http: httpx.AsyncClient, parties: tuple[Client, Client]) -> None:
    client, rs = parties
    first = await start(http, client)
    second = assert_issued(await refresh(http, client, first["refresh_token"]))
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert grant_of(second["refresh_token"]) == grant_of(first["refresh_token"])
    # The old refresh token is dead; the old access token lives out its own life.
    assert not await active(http, rs, first["refresh_token"])
    assert await active(http, rs, first["access_token"])
    third = assert_issued(await refresh(http, client, second["refresh_token"]))
    for token in (second["access_token"], third["access_token"], third["refresh_token"]):
        assert await active(http, rs, token)
    assert not await active(http, rs, second["refresh_token"])
    doc = await introspect(http, rs, third["access_token"])
    assert doc["username"] == "alice" and doc["client_id"] == client["client_id"]


async def test_replaying_a_rotated_token_revokes_the_grant(
        http: httpx.AsyncClient, redis_db: redis.Redis, parties: tuple[Client, Client]) -> None:
    client, rs = parties
    first = await start(http, client)
    second = assert_issued(await refresh(http, client, first["refresh_token"]))
    newest = assert_issued(await refresh(http, client, second["refresh_token"]))
    other = await start(http, client)  # another grant of the same user and client

    assert_error(await refresh(http, client, first["refresh_token"]), 400, "invalid_grant", REUSED)

    for token in (first["access_token"], second["access_token"], newest["access_token"],
                  newest["refresh_token"]):
        assert not await active(http, rs, token)
    assert list(redis_db.scan_iter(match=f"tsv:{{g:{grant_of(newest['access_token'])}}}:*")) == []
    login = await http.post("/login", headers={"Authorization": f"Bearer {newest['access_token']}"})
    assert login.status_code == 401 and login.json()["error"] == "invalid_token"
    # Every later attempt on the grant fails, including the one the thief would try next.
    for rt in (newest["refresh_token"], second["refresh_token"], first["refresh_token"]):
        assert_error(await refresh(http, client, rt), 400, "invalid_grant", INVALID)
    assert await active(http, rs, other["access_token"])
    assert_issued(await refresh(http, client, other["refresh_token"]))


SCOPES: list[tuple[str, str | None, dict[str, str], str | None, str | None]] = [
    # id, scope of the original grant, refresh params, scope granted, invalid_scope description
    ("omitted-keeps-original", None, {}, "read write", None),
    ("empty-is-omitted", None, {"scope": ""}, "read write", None),
    ("narrower", None, {"scope": "read"}, "read", None),
    ("same-reordered", None, {"scope": "write read"}, "read write", None),
    ("wider", "read", {"scope": "read write"}, None,
     "The requested scope exceeds the scope originally granted."),
    ("outside-the-client", None, {"scope": "admin"}, None,
     "The requested scope exceeds the scope originally granted."),
    ("narrowed-grant-stays-narrow", "read", {}, "read", None),
    ("malformed", None, {"scope": "read  write"}, None, "The scope parameter is malformed (RFC 6749 §3.3)."),
]


@pytest.mark.parametrize(("original", "params", "scope", "problem"), [s[1:] for s in SCOPES],
                         ids=[s[0] for s in SCOPES])
async def test_refresh_scope(http: httpx.AsyncClient, redis_db: redis.Redis,
                             parties: tuple[Client, Client], original: str | None,
                             params: dict[str, str], scope: str | None, problem: str | None) -> None:
    client, rs = parties
    first = await start(http, client, **({} if original is None else {"scope": original}))
    before = snapshot(redis_db)
    resp = await refresh(http, client, first["refresh_token"], **params)
    if problem is not None:
        assert_error(resp, 400, "invalid_scope", problem)
        # Nothing rotated: the refresh token still works for a proper request.
        assert snapshot(redis_db) == before
        assert_issued(await refresh(http, client, first["refresh_token"]), original or "read write")
        return
    second = assert_issued(resp, scope)
    assert (await introspect(http, rs, second["access_token"]))["scope"] == scope
    # A narrower access token does not narrow the grant: the next refresh may ask for all of it.
    third = assert_issued(await refresh(http, client, second["refresh_token"]), original or "read write")
    assert (await introspect(http, rs, third["refresh_token"]))["scope"] == (original or "read write")


async def test_another_clients_refresh_token_is_refused_and_left_alone(
        http: httpx.AsyncClient, redis_db: redis.Redis, parties: tuple[Client, Client]) -> None:
    owner, thief = parties
    first = await start(http, owner)
    before = snapshot(redis_db)
    for _ in range(2):  # not counted as a replay either
        assert_error(await refresh(http, thief, first["refresh_token"]), 400, "invalid_grant", FOREIGN)
    assert snapshot(redis_db) == before
    assert await active(http, thief, first["access_token"])
    assert await active(http, thief, first["refresh_token"])
    assert_issued(await refresh(http, owner, first["refresh_token"]))


async def test_public_client_refreshes_with_client_id_only(http: httpx.AsyncClient) -> None:
    await new_user(http)
    public = await new_client(http, name="spa", token_endpoint_auth_method="none")
    confidential = await new_client(http)
    issued = await http.post("/oauth/token", data={"grant_type": "password", "username": "alice",
                                                   "password": "correct horse",
                                                   "client_id": public["client_id"]})
    first = assert_issued(issued)
    second = await http.post("/oauth/token", data={"grant_type": "refresh_token",
                                                   "refresh_token": first["refresh_token"],
                                                   "client_id": public["client_id"]})
    assert_issued(second)
    # The public client's refresh token is bound to it like any other.
    stolen = await refresh(http, confidential, second.json()["refresh_token"])
    assert_error(stolen, 400, "invalid_grant", FOREIGN)


HINTS = [None, "access_token", "refresh_token"]


@pytest.mark.parametrize("hint", HINTS, ids=["no-hint", "hint-access_token", "hint-refresh_token"])
async def test_refresh_token_at_introspection(http: httpx.AsyncClient,
                                              parties: tuple[Client, Client], hint: str | None) -> None:
    """RFC 7662 §2.1: the hint only helps the lookup; a wrong hint still finds the token."""
    client, rs = parties
    first = await start(http, client)
    data = {"token": first["refresh_token"], **({} if hint is None else {"token_type_hint": hint})}
    resp = await http.post("/oauth/introspect", data=data, auth=(rs["client_id"], rs["client_secret"]))
    assert resp.status_code == 200, resp.text
    assert resp.headers["cache-control"] == "no-store"
    doc = resp.json()
    assert doc["exp"] - doc["iat"] == 14 * 24 * 3600
    assert doc == {"active": True, "scope": "read write", "client_id": client["client_id"],
                   "token_type": "refresh_token", "exp": doc["exp"], "iat": doc["iat"],
                   "sub": "alice", "username": "alice", "iss": "http://testserver"}
    # But it is not an access token: a bearer-protected endpoint refuses it.
    login = await http.post("/login", headers={"Authorization": f"Bearer {first['refresh_token']}"})
    assert login.status_code == 401 and login.json()["error"] == "invalid_token"


def _set_rotated_at(r: redis.Redis, token: str, rotated_ms: int) -> None:
    """Move the moment a refresh token was rotated, as if time had passed since. No request
    can age a rotation, so this writes the service's record format (its `rot` field)."""
    key = token_key(token)
    raw = r.get(key)
    assert raw is not None
    record = json.loads(raw)
    assert "rot" in record
    record["rot"] = rotated_ms
    assert r.set(key, json.dumps(record), keepttl=True)


GRACES: list[tuple[str, int, int | None, bool]] = [
    # id, refresh_grace setting, ms since rotation (None: as it happens), replay accepted
    ("grace-0-at-once", 0, None, False),
    ("grace-5-at-once", 5, None, True),
    ("grace-5-after-4.9s", 5, 4900, True),
    ("grace-5-after-5s", 5, 5000, False),
    ("grace-5-after-1min", 5, 60000, False),
]


@pytest.mark.parametrize(("grace", "elapsed", "accepted"), [g[1:] for g in GRACES],
                         ids=[g[0] for g in GRACES])
async def test_refresh_grace(app_factory: AppFactory, redis_db: redis.Redis, grace: int,
                             elapsed: int | None, accepted: bool) -> None:
    async with app_factory(refresh_grace=grace) as http:
        await new_user(http)
        client = await new_client(http)
        rs = await new_client(http, name="resource server", introspection="all")
        first = await start(http, client)
        second = assert_issued(await refresh(http, client, first["refresh_token"]))
        if elapsed is not None:
            _set_rotated_at(redis_db, first["refresh_token"], int(time.time() * 1000) - elapsed)
        replay = await refresh(http, client, first["refresh_token"])
        if accepted:
            third = assert_issued(replay)
            assert third["refresh_token"] != second["refresh_token"]
            # A concurrent retry: both answers are good, and the rotated one stays rotated.
            for token in (second["access_token"], second["refresh_token"], third["access_token"],
                          third["refresh_token"]):
                assert await active(http, rs, token)
            assert not await active(http, rs, first["refresh_token"])
            # Outside the grace the same replay is theft, and ends the grant.
            _set_rotated_at(redis_db, first["refresh_token"], int(time.time() * 1000) - grace * 1000)
            assert_error(await refresh(http, client, first["refresh_token"]), 400, "invalid_grant", REUSED)
            for token in (second["refresh_token"], third["access_token"], third["refresh_token"]):
                assert not await active(http, rs, token)
        else:
            assert_error(replay, 400, "invalid_grant", REUSED)
            for token in (second["access_token"], second["refresh_token"]):
                assert not await active(http, rs, token)


@pytest.mark.parametrize("grace", [0, 5])
async def test_concurrent_refreshes_of_one_token(app_factory: AppFactory, redis_db: redis.Redis,
                                                 grace: int) -> None:
    async with app_factory(refresh_grace=grace) as http:
        await new_user(http)
        client = await new_client(http)
        rs = await new_client(http, name="resource server", introspection="all")
        first = await start(http, client)
        answers = await asyncio.gather(*(refresh(http, client, first["refresh_token"]) for _ in range(20)))
        ok = [resp for resp in answers if resp.status_code == 200]
        if grace == 0:
            # One wins; the next is a replay and ends the grant; the rest find nothing left.
            assert len(ok) == 1
            errors = [resp for resp in answers if resp.status_code != 200]
            for resp in errors:
                assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant"
            descriptions = sorted(resp.json()["error_description"] for resp in errors)
            assert descriptions == sorted([REUSED] + [INVALID] * 18)
            winner = assert_issued(ok[0])
            assert not await active(http, rs, winner["access_token"])
            assert list(redis_db.scan_iter(match=f"tsv:{{g:{grant_of(first['access_token'])}}}:*")) == []
        else:
            # Within the grace every concurrent retry gets its own working pair.
            assert len(ok) == 20
            pairs = [assert_issued(resp) for resp in ok]
            assert len({p["refresh_token"] for p in pairs}) == 20
            for pair in pairs[:3]:
                assert await active(http, rs, pair["access_token"])
                assert await active(http, rs, pair["refresh_token"])


def _flip(token: str, at: int) -> str:
    return token[:at] + ("A" if token[at] != "A" else "B") + token[at + 1:]


FORGED: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("flipped-in-grant-id", lambda t: _flip(t["refresh_token"], 9)),
    ("flipped-in-body", lambda t: _flip(t["refresh_token"], 40)),
    ("flipped-in-tag", lambda t: _flip(t["refresh_token"], 66)),
    ("access-token-as-refresh-token", lambda t: t["access_token"]),
    ("access-prefix-on-refresh-token", lambda t: "tsv_at_" + t["refresh_token"][7:]),
    ("code-prefix", lambda t: "tsv_ac_" + t["refresh_token"][7:]),
    ("minted-as-code", lambda t: CODEC.mint(CODE, grant_of(t["refresh_token"])).token),
    ("other-server-key", lambda t: TokenCodec(["another-server-key-0123456789abcdef"]).mint(
        REFRESH, grant_of(t["refresh_token"])).token),
    ("truncated", lambda t: t["refresh_token"][:-1]),
    ("extended", lambda t: t["refresh_token"] + "A"),
    ("padded", lambda t: t["refresh_token"][:-1] + "="),
    ("whitespace", lambda t: " " + t["refresh_token"][1:]),
    ("garbage", lambda t: "not-a-token"),
    ("prefix-only", lambda t: "tsv_rt_"),
    ("non-ascii", lambda t: "tsv_rt_" + "é" * 63),
]


@pytest.mark.parametrize("forge", [f for _, f in FORGED], ids=[i for i, _ in FORGED])
async def test_forged_tokens_are_refused_without_asking_redis(
        http: httpx.AsyncClient, redis_db: redis.Redis, parties: tuple[Client, Client],
        forge: Callable[[dict[str, Any]], str]) -> None:
    client, rs = parties
    first = await start(http, client)  # also verifies and caches the client's secret
    token = forge(first)
    assert token != first["refresh_token"]
    assert CODEC.parse(token, REFRESH) is None
    before_keys = snapshot(redis_db)
    before = command_calls(redis_db)
    assert_error(await refresh(http, client, token), 400, "invalid_grant", INVALID)
    assert command_calls(redis_db) == before
    assert snapshot(redis_db) == before_keys
    assert_issued(await refresh(http, client, first["refresh_token"]))


async def test_expired_or_revoked_refresh_token(http: httpx.AsyncClient, redis_db: redis.Redis,
                                                parties: tuple[Client, Client]) -> None:
    client, rs = parties
    expired = await start(http, client)
    assert redis_db.pexpireat(token_key(expired["refresh_token"]), int(time.time() * 1000) - 1)
    assert_error(await refresh(http, client, expired["refresh_token"]), 400, "invalid_grant", INVALID)
    revoked = await start(http, client)
    resp = await http.post("/oauth/revoke", data={"token": revoked["refresh_token"]},
                           auth=(client["client_id"], client["client_secret"]))
    assert resp.status_code == 200
    assert_error(await refresh(http, client, revoked["refresh_token"]), 400, "invalid_grant", INVALID)


async def test_refresh_needs_the_refresh_token_grant(http: httpx.AsyncClient) -> None:
    await new_user(http)
    client = await new_client(http, grant_types=["password", "refresh_token"])
    first = await start(http, client)
    patched = await http.patch(f"/admin/clients/{client['client_id']}", json={"grant_types": ["password"]},
                               headers=ADMIN)
    assert patched.status_code == 200, patched.text
    assert_error(await refresh(http, client, first["refresh_token"]), 400, "unauthorized_client",
                 "The client may not use grant_type=refresh_token.")


async def test_gofundo_lifetimes_through_rotation(app_factory: AppFactory, redis_db: redis.Redis) -> None:
    """Access 2 weeks, refresh 1 hour: the grant index must outlive the long access tokens."""
    two_weeks, hour = 14 * 24 * 3600, 3600
    async with app_factory() as http:
        await new_user(http)
        client = await new_client(http, access_token_ttl=two_weeks, refresh_token_ttl=hour)
        rs = await new_client(http, name="resource server", introspection="all")
        first = assert_issued(await password_token(http, client), expires_in=two_weeks)
        index = keys.grant_index(grant_of(first["access_token"]))
        # Absolute expiry times (PEXPIRETIME), so the order of these reads does not matter.
        assert redis_db.pexpiretime(index) >= redis_db.pexpiretime(token_key(first["access_token"]))
        # Two weeks on, less ten seconds: the index (made with the first access token) is nearly
        # gone; a refresh now mints an access token that lives two more weeks.
        assert redis_db.pexpire(index, 10_000)
        second = assert_issued(await refresh(http, client, first["refresh_token"]), expires_in=two_weeks)
        at_ttl = redis_db.pttl(token_key(second["access_token"]))
        rt_ttl = redis_db.pttl(token_key(second["refresh_token"]))
        assert two_weeks * 1000 - 5000 < at_ttl <= two_weeks * 1000
        assert hour * 1000 - 5000 < rt_ttl <= hour * 1000
        assert redis_db.pexpiretime(index) >= redis_db.pexpiretime(token_key(second["access_token"]))
        # So revoking the grant still finds that access token.
        resp = await http.post("/oauth/revoke", data={"token": second["refresh_token"]},
                               auth=(client["client_id"], client["client_secret"]))
        assert resp.status_code == 200
        assert not await active(http, rs, second["access_token"])
