"""The lockout is the user's, whichever client counted the failures (the contract's security
rules): a user locked through any client's `max_user_login_attempts` is refused (423) through
every client, by the password grant and by the authorization page's sign-in form, until an
admin unlocks them or the lockout period ends; a right password through another client
meanwhile resets nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.support.api import new_client, new_user, password_token
from tests.support.apps import AppFactory
from tests.support.assertions import assert_error, assert_tokens
from tests.support.authflow import (
    authorize,
    browser,
    is_consent_page,
    is_login_page,
    public_app,
    sign_in,
    text,
)
from tests.support.config import ADMIN
from tests.support.console import sign_in as console_sign_in
from tests.support.redis_servers import RedisServer
from tests.support.service import Service, serving
from tokensvc.store import keys

WRONG = "Invalid username or password."
LOCKED = "The user is locked after too many failed logins."
LOCKED_PAGE = "This account is locked after too many failed sign-ins. Contact an administrator."
Client = dict[str, Any]


async def login(http: httpx.AsyncClient, client: Client, password: str) -> httpx.Response:
    return await password_token(http, client, password=password)


async def view(http: httpx.AsyncClient, username: str = "alice") -> dict[str, Any]:
    """The admin API's view of the user."""
    resp = await http.get(f"/admin/users/{username}", headers=ADMIN)
    assert resp.status_code == 200, resp.text
    doc: dict[str, Any] = resp.json()
    return doc


def failures(r: redis.Redis) -> int | None:
    raw = r.get(keys.user_failures("alice"))
    return None if raw is None else int(raw)


@pytest.fixture
async def pair(http: httpx.AsyncClient) -> tuple[Client, Client]:
    """alice, a strict client (3 failures) and a lenient one (5)."""
    await new_user(http)
    return (await new_client(http, name="strict", max_user_login_attempts=3),
            await new_client(http, name="lenient", max_user_login_attempts=5))


async def test_a_lock_through_a_strict_client_holds_at_a_lenient_one(
        http: httpx.AsyncClient, redis_db: redis.Redis, pair: tuple[Client, Client]) -> None:
    strict, lenient = pair
    for _ in range(2):
        assert_error(await login(http, strict, "wrong horse"), 400, "invalid_grant", WRONG)
    assert_error(await login(http, strict, "wrong horse"), 423, "user_locked", LOCKED)
    # The lenient client's limit (5) is not reached, but the user is locked: its right
    # password is refused, writes no token and resets nothing.
    tokens_before = set(redis_db.scan_iter(match="tsv:*:t:*"))
    for client in (lenient, strict, lenient):
        assert_error(await login(http, client, "correct horse"), 423, "user_locked", LOCKED)
    assert set(redis_db.scan_iter(match="tsv:*:t:*")) == tokens_before
    assert failures(redis_db) == 3
    assert redis_db.pttl(keys.user_lock("alice")) == -1  # lockout_period 0: until unlocked
    assert await view(http) == {"username": "alice", "verified": True,
                                "created_at": (await view(http))["created_at"],
                                "failed_logins": 3, "locked": True}
    # Only an admin's unlock lifts it, for every client.
    assert (await http.post("/admin/users/alice/unlock", headers=ADMIN)).status_code == 204
    assert redis_db.exists(keys.user_lock("alice"), keys.user_failures("alice")) == 0
    assert (await view(http))["locked"] is False
    assert_tokens(await login(http, lenient, "correct horse"))
    assert_tokens(await login(http, strict, "correct horse"))


async def test_failures_through_a_lenient_client_lock_at_a_strict_ones_limit(
        http: httpx.AsyncClient, redis_db: redis.Redis, pair: tuple[Client, Client]) -> None:
    strict, lenient = pair
    for _ in range(3):
        assert_error(await login(http, lenient, "wrong horse"), 400, "invalid_grant", WRONG)
    assert (await view(http))["failed_logins"] == 3  # 3 of the lenient client's 5: not locked
    # The strict client's limit is reached: it refuses without a check, and that is a lock.
    assert_error(await login(http, strict, "correct horse"), 423, "user_locked", LOCKED)
    assert_error(await login(http, lenient, "correct horse"), 423, "user_locked", LOCKED)
    assert failures(redis_db) == 3
    shown = await view(http)
    assert shown["failed_logins"] == 3 and shown["locked"] is True


async def test_the_authorization_form_and_the_password_grant_share_the_lock(
        app_factory: AppFactory, redis_db: redis.Redis) -> None:
    async with app_factory(max_user_login_attempts=5) as http:
        await new_user(http)
        strict_app = await public_app(http, max_user_login_attempts=2)
        lenient_app = await public_app(http, name="Lenient app")
        api = await new_client(http, name="api")
        login_page = await authorize(http, strict_app)
        first = await sign_in(http, login_page, password="wrong 1")
        assert first.status_code == 400 and is_login_page(first)
        locked = await sign_in(http, login_page, password="wrong 2")
        assert locked.status_code == 423 and LOCKED_PAGE in text(locked)
        # The other application's form, and the password grant of a client with the default
        # limit (5), both refuse the right password.
        other = await sign_in(http, await authorize(http, lenient_app))
        assert other.status_code == 423 and LOCKED_PAGE in text(other)
        assert_error(await login(http, api, "correct horse"), 423, "user_locked", LOCKED)
        assert (await http.post("/admin/users/alice/unlock", headers=ADMIN)).status_code == 204
        assert is_consent_page(await sign_in(http, await authorize(http, lenient_app)))
        # And the other way: locked through the password grant, refused on the form.
        strict_api = await new_client(http, name="strict api", max_user_login_attempts=1)
        assert_error(await login(http, strict_api, "wrong horse"), 423, "user_locked", LOCKED)
        async with browser(http) as another:  # no session yet
            refused = await sign_in(another, await authorize(another, lenient_app))
        assert refused.status_code == 423 and LOCKED_PAGE in text(refused)


@pytest.mark.parametrize("period", [60, 86400])
async def test_the_lock_ends_with_the_lockout_period(app_factory: AppFactory, redis_db: redis.Redis,
                                                     period: int) -> None:
    async with app_factory(lockout_period=period) as http:
        await new_user(http)
        strict = await new_client(http, name="strict", max_user_login_attempts=2)
        lenient = await new_client(http, name="lenient", max_user_login_attempts=5)
        for _ in range(2):
            await login(http, strict, "wrong horse")
        lock, counter = keys.user_lock("alice"), keys.user_failures("alice")
        # The lock and the counter end together, a lockout period after the last failure.
        assert period * 1000 - 2000 < redis_db.pttl(lock) <= period * 1000
        assert abs(redis_db.pttl(lock) - redis_db.pttl(counter)) < 1000
        # A refusal while locked does not extend it.
        redis_db.pexpire(lock, 5000)
        redis_db.pexpire(counter, 5000)
        assert_error(await login(http, lenient, "correct horse"), 423, "user_locked", LOCKED)
        assert 0 < redis_db.pttl(lock) <= 5000
        # When the period has passed (expired now rather than slept through), every client
        # takes the user again.
        past = int(time.time() * 1000) - 1
        assert redis_db.pexpireat(lock, past) and redis_db.pexpireat(counter, past)
        assert_tokens(await login(http, lenient, "correct horse"))
        assert_tokens(await login(http, strict, "correct horse"))


async def test_a_lock_found_at_a_strict_client_ends_when_the_counter_would(
        app_factory: AppFactory, redis_db: redis.Redis) -> None:
    async with app_factory(lockout_period=600) as http:
        await new_user(http)
        strict = await new_client(http, name="strict", max_user_login_attempts=2)
        lenient = await new_client(http, name="lenient", max_user_login_attempts=5)
        for _ in range(2):
            await login(http, lenient, "wrong horse")
        redis_db.pexpire(keys.user_failures("alice"), 30_000)  # as if the failures were older
        assert_error(await login(http, strict, "correct horse"), 423, "user_locked", LOCKED)
        assert 25_000 < redis_db.pttl(keys.user_lock("alice")) <= 30_000


async def test_a_right_password_in_flight_when_the_lock_falls_is_refused(
        http: httpx.AsyncClient, redis_db: redis.Redis, pair: tuple[Client, Client]) -> None:
    """The lenient client's right password is being checked while the strict client finds the
    user over its limit and locks them: the check ends refused, and resets nothing."""
    strict, lenient = pair
    for _ in range(3):
        await login(http, lenient, "wrong horse")
    hasher = http.app.state.services.hasher  # type: ignore[attr-defined]
    original = hasher.verify
    checking, release = asyncio.Event(), asyncio.Event()

    async def held(encoded: str, secret: str, kind: str = "password") -> bool:
        if secret == "correct horse":
            checking.set()
            await release.wait()
        result: bool = await original(encoded, secret, kind)
        return result

    hasher.verify = held
    in_flight = asyncio.create_task(login(http, lenient, "correct horse"))
    await asyncio.wait_for(checking.wait(), 5)
    assert_error(await login(http, strict, "wrong horse"), 423, "user_locked", LOCKED)
    release.set()
    assert_error(await in_flight, 423, "user_locked", LOCKED)
    assert failures(redis_db) == 3 and redis_db.exists(keys.user_lock("alice"))
    assert redis_db.exists(keys.user_checks("alice")) == 0


async def test_deleting_a_user_ends_the_lock(http: httpx.AsyncClient, redis_db: redis.Redis,
                                             pair: tuple[Client, Client]) -> None:
    strict, lenient = pair
    for _ in range(3):
        await login(http, strict, "wrong horse")
    assert redis_db.exists(keys.user_lock("alice"))
    assert (await http.delete("/admin/users/alice", headers=ADMIN)).status_code == 204
    assert redis_db.exists(keys.user_lock("alice"), keys.user_failures("alice")) == 0
    await new_user(http)  # someone new under the old name is not locked
    assert_tokens(await login(http, lenient, "correct horse"))


async def test_the_console_shows_a_lock_set_below_the_default_limit(
        http: httpx.AsyncClient, pair: tuple[Client, Client]) -> None:
    strict, lenient = pair
    for _ in range(3):
        await login(http, strict, "wrong horse")
    console = await console_sign_in(http)
    page = await console.get("/admin/console/users?q=alice")
    # 3 failures, under the service-wide default (5), yet locked: the page says so.
    assert "<dd>3 (locked)</dd>" in page.text and 'value="unlock"' in page.text
    unlocked = await console.act("/admin/console/users", action="unlock", username="alice")
    assert unlocked.status_code == 303
    after = await console.follow(unlocked)
    assert "<dd>0</dd>" in after.text and 'value="unlock"' not in after.text
    assert_tokens(await login(http, lenient, "correct horse"))


# -- credential stuffing against a real `tokensvc serve` -----------------------------------


@pytest.fixture
def live(redis_db: redis.Redis, redis_server: RedisServer, tmp_path: Path) -> Iterator[Service]:
    with serving(redis_server.url, tmp_path) as (svc,):
        yield svc


async def test_credential_stuffing_spread_over_two_clients_is_locked_out_everywhere(live: Service) -> None:
    """Guesses spread over a strict client (5) and a lenient one (50), in concurrent waves:
    once the strict client's limit is reached the user is locked, and the lenient client, far
    from its own limit, does not let the right password through."""
    await live.create_user("alice", "correct horse")
    strict = await live.create_client(name="strict", max_user_login_attempts=5)
    lenient = await live.create_client(name="lenient", max_user_login_attempts=50)
    async with live.http() as http:
        answers: list[httpx.Response] = []
        for wave in range(4):
            answers += await asyncio.gather(*(
                login(http, (strict, lenient)[i % 2], f"leaked password {wave}-{i}") for i in range(6)))
        # The right password, through the lenient client first, then the strict one.
        for client in (lenient, strict):
            assert_error(await login(http, client, "correct horse"), 423, "user_locked", LOCKED)
        # Once locked, guesses were refused through both clients without a check: only the
        # guesses in flight when the lock fell were answered 400.
        statuses = [r.status_code for r in answers]
        assert set(statuses) <= {400, 423} and statuses.count(423) >= 24 - 10, statuses
        shown = await view(http)
        assert shown["locked"] is True and 5 <= shown["failed_logins"] < 50
        unlocked = await http.post("/admin/users/alice/unlock", headers=ADMIN)
        assert unlocked.status_code == 204
        for client in (lenient, strict):
            assert_tokens(await login(http, client, "correct horse"))
