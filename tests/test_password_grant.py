"""RFC 6749 §4.3 password grant with finAPI's lockout (423) and verification (403) rules."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
import redis

from tests.support.api import introspect, new_client, new_user, password_token
from tests.support.apps import ON_SINGLE_AND_CLUSTER, AppFactory
from tests.support.assertions import assert_error, assert_tokens
from tests.support.config import ADMIN
from tests.support.stored import failure_keys
from tokensvc.store import keys

WRONG = "Invalid username or password."
LOCKED = "The user is locked after too many failed logins."
UNVERIFIED = "The user is not verified, and this client requires verified users."
Client = dict[str, Any]

pytestmark = ON_SINGLE_AND_CLUSTER


async def login(http: httpx.AsyncClient, client: Client, password: str, username: str = "alice",
                **extra: str) -> httpx.Response:
    return await password_token(http, client, username=username, password=password, **extra)


def assert_issued(resp: httpx.Response, scope: str | None = "read write") -> dict[str, Any]:
    return assert_tokens(resp, scope=scope)


def failures(r: redis.Redis, username: str = "alice") -> int | None:
    raw = r.get(keys.user_failures(username))
    return None if raw is None else int(raw)


async def test_success_returns_access_and_refresh_tokens(http: httpx.AsyncClient, client: Client,
                                                         redis_db: redis.Redis) -> None:
    body = assert_issued(await login(http, client, "correct horse"))
    for token, kind in ((body["access_token"], "Bearer"), (body["refresh_token"], "refresh_token")):
        doc = await introspect(http, client, token)
        assert doc["active"] is True and doc["token_type"] == kind
        assert doc["username"] == "alice" and doc["sub"] == "alice"
        assert doc["client_id"] == client["client_id"] and doc["scope"] == "read write"
    narrow = assert_issued(await login(http, client, "correct horse", scope="read"), scope="read")
    assert narrow["access_token"] != body["access_token"]
    assert failure_keys(redis_db) == set()


BAD_LOGINS: list[tuple[str, dict[str, str], int, str, str]] = [
    # id, username/password params, status, error, description
    ("wrong-password", {"username": "alice", "password": "wrong horse"}, 400, "invalid_grant", WRONG),
    ("unknown-user", {"username": "mallory", "password": "correct horse"}, 400, "invalid_grant", WRONG),
    ("username-case-differs", {"username": "Alice", "password": "correct horse"}, 400, "invalid_grant",
     WRONG),
    ("password-with-trailing-space", {"username": "alice", "password": "correct horse "}, 400,
     "invalid_grant", WRONG),
    ("missing-password", {"username": "alice"}, 400, "invalid_request",
     "username and password are required."),
    ("missing-username", {"password": "correct horse"}, 400, "invalid_request",
     "username and password are required."),
    ("empty-password-is-missing", {"username": "alice", "password": ""}, 400, "invalid_request",
     "username and password are required."),
]


@pytest.mark.parametrize(("params", "status", "error", "description"), [b[1:] for b in BAD_LOGINS],
                         ids=[b[0] for b in BAD_LOGINS])
async def test_bad_credentials(http: httpx.AsyncClient, client: Client, redis_db: redis.Redis,
                               params: dict[str, str], status: int, error: str, description: str) -> None:
    resp = await http.post("/oauth/token", data={"grant_type": "password", **params,
                                                 "client_id": client["client_id"],
                                                 "client_secret": client["client_secret"]})
    assert_error(resp, status, error, description)
    assert list(redis_db.scan_iter(match="tsv:*:t:*")) == []
    # Only a wrong password for a user who exists counts towards a lockout.
    counted = params.get("username") == "alice" and error == "invalid_grant"
    expected = {keys.user_failures("alice").encode()} if counted else set()
    assert failure_keys(redis_db) == expected


LOCKOUTS: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any] | None, int]] = [
    # id, settings, client fields at creation, PATCH body or None, attempts allowed
    ("global-default-5", {}, {}, None, 5),
    ("global-setting-2", {"max_user_login_attempts": 2}, {}, None, 2),
    ("global-setting-1", {"max_user_login_attempts": 1}, {}, None, 1),
    ("client-3-over-default", {}, {"max_user_login_attempts": 3}, None, 3),
    ("client-4-over-global-2", {"max_user_login_attempts": 2}, {"max_user_login_attempts": 4}, None, 4),
    ("client-by-patch", {}, {}, {"max_user_login_attempts": 2}, 2),
    ("patch-back-to-global", {"max_user_login_attempts": 3}, {"max_user_login_attempts": 6},
     {"max_user_login_attempts": None}, 3),
]


@pytest.mark.parametrize(("settings", "fields", "patch", "limit"), [lo[1:] for lo in LOCKOUTS],
                         ids=[lo[0] for lo in LOCKOUTS])
async def test_lockout_until_an_admin_unlocks(app_factory: AppFactory, redis_db: redis.Redis,
                                              settings: dict[str, Any], fields: dict[str, Any],
                                              patch: dict[str, Any] | None, limit: int) -> None:
    async with app_factory(**settings) as http:
        await new_user(http)
        client = await new_client(http, **fields)
        assert_issued(await login(http, client, "correct horse"))  # warms the client cache
        if patch is not None:
            resp = await http.patch(f"/admin/clients/{client['client_id']}", json=patch, headers=ADMIN)
            assert resp.status_code == 200, resp.text
        for attempt in range(1, limit):
            assert_error(await login(http, client, "wrong horse"), 400, "invalid_grant", WRONG)
            assert failures(redis_db) == attempt
        # The attempt that reaches the limit locks the user, and says so.
        assert_error(await login(http, client, "wrong horse"), 423, "user_locked", LOCKED)
        assert failures(redis_db) == limit
        # Locked: even the right password is refused, and no token is written.
        tokens_before = set(redis_db.scan_iter(match="tsv:*:t:*"))
        for password in ("correct horse", "wrong horse", "correct horse"):
            assert_error(await login(http, client, password), 423, "user_locked", LOCKED)
        assert set(redis_db.scan_iter(match="tsv:*:t:*")) == tokens_before
        assert failures(redis_db) == limit  # refused before the password is checked
        # With lockout_period 0 (the default) the lock lasts until an admin lifts it.
        assert redis_db.pttl(keys.user_failures("alice")) == -1
        user = await http.get("/admin/users/alice", headers=ADMIN)
        assert user.json()["failed_logins"] == limit

        unlocked = await http.post("/admin/users/alice/unlock", headers=ADMIN)
        assert unlocked.status_code == 204, unlocked.text
        assert failures(redis_db) is None
        assert_issued(await login(http, client, "correct horse"))


async def test_unlocking_an_unknown_user_is_404(http: httpx.AsyncClient) -> None:
    resp = await http.post("/admin/users/nobody/unlock", headers=ADMIN)
    assert resp.status_code == 404
    assert resp.json()["error"] == "not_found"


async def test_lockout_counts_across_clients(http: httpx.AsyncClient, redis_db: redis.Redis) -> None:
    """The counter is the user's: failures through one client count at another, and the lock
    they cause holds at every client (tests/test_lockout_across_clients.py has the rest)."""
    await new_user(http)
    strict = await new_client(http, name="strict", max_user_login_attempts=3)
    lenient = await new_client(http, name="lenient", max_user_login_attempts=10)
    for _ in range(2):
        assert_error(await login(http, lenient, "wrong horse"), 400, "invalid_grant", WRONG)
    assert_error(await login(http, strict, "wrong horse"), 423, "user_locked", LOCKED)
    assert_error(await login(http, strict, "correct horse"), 423, "user_locked", LOCKED)
    # The lenient client's own limit is not reached, but the user is locked.
    assert_error(await login(http, lenient, "correct horse"), 423, "user_locked", LOCKED)
    assert failures(redis_db) == 3


async def test_success_resets_the_counter(app_factory: AppFactory, redis_db: redis.Redis) -> None:
    async with app_factory(max_user_login_attempts=3) as http:
        await new_user(http)
        client = await new_client(http)
        for _ in range(4):  # 8 failures in all, but never 3 in a row
            for attempt in (1, 2):
                assert_error(await login(http, client, "wrong horse"), 400, "invalid_grant", WRONG)
                assert failures(redis_db) == attempt
            assert_issued(await login(http, client, "correct horse"))
            assert failures(redis_db) is None


@pytest.mark.parametrize("period", [1, 900, 86400])
async def test_lockout_period_makes_the_counter_expire(app_factory: AppFactory, redis_db: redis.Redis,
                                                       period: int) -> None:
    async with app_factory(max_user_login_attempts=2, lockout_period=period) as http:
        await new_user(http)
        client = await new_client(http)
        key = keys.user_failures("alice")
        assert_error(await login(http, client, "wrong horse"), 400, "invalid_grant", WRONG)
        assert period * 1000 - 2000 < redis_db.pttl(key) <= period * 1000
        # Each failure starts the period again: it runs from the last failure.
        redis_db.pexpire(key, 500)
        assert_error(await login(http, client, "wrong horse"), 423, "user_locked", LOCKED)
        assert period * 1000 - 2000 < redis_db.pttl(key) <= period * 1000
        assert_error(await login(http, client, "correct horse"), 423, "user_locked", LOCKED)
        # A refused login while locked does not extend the lock.
        redis_db.pexpire(key, 500)
        assert_error(await login(http, client, "correct horse"), 423, "user_locked", LOCKED)
        assert 0 < redis_db.pttl(key) <= 500
        # Let the period pass (expire the counter and the lock now, rather than sleeping
        # through it).
        lock = keys.user_lock("alice")
        assert 0 < redis_db.pttl(lock) <= period * 1000
        assert redis_db.pexpireat(key, int(time.time() * 1000) - 1)
        assert redis_db.pexpireat(lock, int(time.time() * 1000) - 1)
        assert redis_db.exists(key, lock) == 0
        assert_issued(await login(http, client, "correct horse"))


async def test_counter_is_not_created_for_unknown_usernames(app_factory: AppFactory,
                                                            redis_db: redis.Redis) -> None:
    async with app_factory(max_user_login_attempts=2, lockout_period=60) as http:
        await new_user(http)
        client = await new_client(http)
        for name in ("mallory", "mallory", "mallory", "eve", "ALICE", "alice\x00", "x" * 300):
            assert_error(await login(http, client, "wrong horse", username=name), 400, "invalid_grant",
                         WRONG)
        assert failure_keys(redis_db) == set()
        assert failures(redis_db, "mallory") is None
        # Nor does an unknown name ever lock: there is nothing to lock.
        assert_error(await login(http, client, "correct horse", username="mallory"), 400,
                     "invalid_grant", WRONG)
        # A user created later under that name starts clean.
        await new_user(http, username="mallory")
        assert_issued(await login(http, client, "correct horse", username="mallory"))


async def test_deleting_a_user_drops_the_counter(http: httpx.AsyncClient, client: Client,
                                                 redis_db: redis.Redis) -> None:
    assert_error(await login(http, client, "wrong horse"), 400, "invalid_grant", WRONG)
    assert failures(redis_db) == 1
    deleted = await http.delete("/admin/users/alice", headers=ADMIN)
    assert deleted.status_code == 204, deleted.text
    assert failures(redis_db) is None
    assert_error(await login(http, client, "correct horse"), 400, "invalid_grant", WRONG)


VERIFICATION: list[tuple[str, bool, bool, int]] = [
    # id, user verified, client requires verified users, expected status
    ("unverified-required", False, True, 403),
    ("unverified-not-required", False, False, 200),
    ("verified-required", True, True, 200),
    ("verified-not-required", True, False, 200),
]


@pytest.mark.parametrize(("verified", "required", "status"), [v[1:] for v in VERIFICATION],
                         ids=[v[0] for v in VERIFICATION])
async def test_user_verification(http: httpx.AsyncClient, redis_db: redis.Redis, verified: bool,
                                 required: bool, status: int) -> None:
    await new_user(http, verified=verified)
    client = await new_client(http, require_verified_users=required)
    resp = await login(http, client, "correct horse")
    if status == 200:
        assert_issued(resp)
        return
    assert_error(resp, 403, "access_denied", UNVERIFIED)
    assert list(redis_db.scan_iter(match="tsv:*:t:*")) == []
    # A wrong password is still just a wrong password: 403 is only for whoever knows it.
    assert_error(await login(http, client, "wrong horse"), 400, "invalid_grant", WRONG)
    # Once the admin verifies the user, the same request succeeds.
    resp = await http.patch("/admin/users/alice", json={"verified": True}, headers=ADMIN)
    assert resp.status_code == 200, resp.text
    assert_issued(await login(http, client, "correct horse"))


async def test_require_verified_users_by_patch(http: httpx.AsyncClient) -> None:
    await new_user(http, verified=False)
    client = await new_client(http)
    assert_issued(await login(http, client, "correct horse"))
    resp = await http.patch(f"/admin/clients/{client['client_id']}",
                            json={"require_verified_users": True}, headers=ADMIN)
    assert resp.status_code == 200, resp.text
    assert_error(await login(http, client, "correct horse"), 403, "access_denied", UNVERIFIED)


async def test_new_password_applies_at_once(http: httpx.AsyncClient, client: Client) -> None:
    resp = await http.patch("/admin/users/alice", json={"password": "battery staple"}, headers=ADMIN)
    assert resp.status_code == 200, resp.text
    assert_error(await login(http, client, "correct horse"), 400, "invalid_grant", WRONG)
    assert_issued(await login(http, client, "battery staple"))


async def test_every_token_names_the_user(http: httpx.AsyncClient, client: Client) -> None:
    body = assert_issued(await login(http, client, "correct horse"))
    rs = await new_client(http, name="resource server", introspection="all")
    for token, kind in ((body["access_token"], "Bearer"), (body["refresh_token"], "refresh_token")):
        doc = await introspect(http, rs, token)
        assert (doc["token_type"], doc["username"], doc["sub"], doc["client_id"], doc["scope"]) == (
            kind, "alice", "alice", client["client_id"], "read write")


async def test_concurrent_guesses_check_at_most_the_limit(app_factory: AppFactory,
                                                          redis_db: redis.Redis) -> None:
    # 50 wrong guesses at once, limit 3: the attempt is counted before argon2 runs, so only
    # three passwords are ever checked (two 400s, then the 423 of the third); the other 47
    # are refused as locked without a check, and the right password is refused after them.
    async with app_factory(max_user_login_attempts=3) as http:
        await new_user(http)
        client = await new_client(http)
        assert_issued(await login(http, client, "correct horse"))  # warms the client cache
        answers = await asyncio.gather(*(login(http, client, f"guess {i}") for i in range(50)))
        statuses = sorted(r.status_code for r in answers)
        assert statuses.count(400) == 2 and statuses.count(423) == 48, statuses
        assert failures(redis_db) == 3
        assert_error(await login(http, client, "correct horse"), 423, "user_locked", LOCKED)


async def test_concurrent_right_passwords_all_succeed(app_factory: AppFactory,
                                                      redis_db: redis.Redis) -> None:
    # The reservation must not turn a burst of right passwords into a lockout: requests beyond
    # the limit wait for a check slot, and every one gets its token.
    async with app_factory(max_user_login_attempts=2) as http:
        await new_user(http)
        client = await new_client(http)
        answers = await asyncio.gather(*(login(http, client, "correct horse") for _ in range(20)))
        assert [r.status_code for r in answers] == [200] * 20
        assert failures(redis_db) is None
        assert redis_db.get(keys.user_checks("alice")) is None


async def test_deleting_a_user_ends_their_tokens(http: httpx.AsyncClient, client: Client,
                                                 redis_db: redis.Redis) -> None:
    first = assert_issued(await login(http, client, "correct horse"))
    second = assert_issued(await login(http, client, "correct horse", scope="read"), scope="read")
    # A rotation keeps the grant; its new tokens must die with the user too.
    rotated = await http.post("/oauth/token", data={
        "grant_type": "refresh_token", "refresh_token": first["refresh_token"],
        "client_id": client["client_id"], "client_secret": client["client_secret"]})
    assert rotated.status_code == 200, rotated.text
    await new_user(http, username="bob", password="bob's horse")
    bobs = assert_issued(await login(http, client, "bob's horse", username="bob"))

    resp = await http.delete("/admin/users/alice", headers=ADMIN)
    assert resp.status_code == 204, resp.text
    for token in (second["access_token"], second["refresh_token"],
                  rotated.json()["access_token"], rotated.json()["refresh_token"]):
        assert await introspect(http, client, token) == {"active": False}
    refused = await http.post("/oauth/token", data={
        "grant_type": "refresh_token", "refresh_token": rotated.json()["refresh_token"],
        "client_id": client["client_id"], "client_secret": client["client_secret"]})
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    assert not list(redis_db.scan_iter(match=keys.user_grants("alice")))
    # Another user's tokens are untouched.
    assert (await introspect(http, client, bobs["access_token"]))["active"] is True
