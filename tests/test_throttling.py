"""Per-client throttling of failed client authentication (429 with Retry-After).

Chosen behaviour, stated once here: a secret that matches the digest a worker already verified
is accepted whatever the failure counter says, so an attacker's guesses do not lock out a
legitimate client on the instances where its secret is cached; everything else (wrong
secrets, and right secrets not yet verified on that worker) is refused with 429 while the
client's failures reach the limit, without running argon2, on every instance sharing Redis.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
import redis

from tests.support.api import new_client
from tests.support.apps import AppFactory
from tests.support.metrics import delta, scrape
from tokensvc.clients import ClientDirectory
from tokensvc.settings import SettingsError, load
from tokensvc.store import keys

LIMIT = 3
THROTTLED = "Too many failed authentications for this client; retry later."


def directory(http: httpx.AsyncClient) -> ClientDirectory:
    found = http.app.state.services.clients  # type: ignore[attr-defined]
    assert isinstance(found, ClientDirectory)
    return found


async def attempt(http: httpx.AsyncClient, client_id: str, secret: str) -> httpx.Response:
    return await http.post("/oauth/token", data={
        "grant_type": "client_credentials", "client_id": client_id, "client_secret": secret})


def assert_throttled(resp: httpx.Response, window: int = 60) -> None:
    assert resp.status_code == 429, resp.text
    assert resp.json() == {"error": "temporarily_unavailable", "error_description": THROTTLED,
                           "message": THROTTLED}
    assert 1 <= int(resp.headers["retry-after"]) <= window
    assert resp.headers["cache-control"] == "no-store"


def authfail_keys(r: redis.Redis) -> list[Any]:
    return list(r.scan_iter(match="*:authfail"))


async def test_wrong_secrets_then_429_on_every_instance(app_factory: AppFactory,
                                                       redis_db: redis.Redis) -> None:
    # Per worker: a right secret this worker never verified is an uncached check, refused too.
    # (With verifiers it matches the record's verifier: tests/test_secret_verifiers.py.)
    async with app_factory(client_auth_failure_limit=LIMIT, argon2_per_worker=True) as a:
        client = await new_client(a)
        cid, secret = client["client_id"], client["client_secret"]
        before = await scrape(a)
        for _ in range(LIMIT):
            assert (await attempt(a, cid, "wrong")).status_code == 401
        assert int(redis_db.get(keys.client_auth_failures(cid)) or 0) == LIMIT
        runs = directory(a).argon2_runs
        assert_throttled(await attempt(a, cid, "wrong"))
        assert_throttled(await attempt(a, cid, "another guess"))
        assert_throttled(await attempt(a, cid, secret))  # right, but never verified here
        assert directory(a).argon2_runs == runs  # refused without argon2
        after = await scrape(a)
        # Every refusal, 401 or 429, still counts as a failed client authentication.
        assert delta(before, after, "tokensvc_client_auth_failures_total") == LIMIT + 3

        # A fresh instance sharing Redis: nothing cached, nothing known locally; the counter rules.
        async with app_factory(client_auth_failure_limit=LIMIT, argon2_per_worker=True) as b:
            assert_throttled(await attempt(b, cid, "wrong"))
            assert_throttled(await attempt(b, cid, secret))
            assert directory(b).argon2_runs == 0
        # Refusals are not failures of a secret check: the counter did not move.
        assert int(redis_db.get(keys.client_auth_failures(cid)) or 0) == LIMIT


async def test_basic_credentials_are_throttled_too(app_factory: AppFactory) -> None:
    async with app_factory(client_auth_failure_limit=LIMIT, argon2_per_worker=True) as http:
        client = await new_client(http)
        cid = client["client_id"]
        for _ in range(LIMIT):
            resp = await http.post("/oauth/introspect", data={"token": "x"}, auth=(cid, "wrong"))
            assert resp.status_code == 401
        resp = await http.post("/oauth/introspect", data={"token": "x"},
                               auth=(cid, client["client_secret"]))
        assert_throttled(resp)


async def test_counter_expires_after_the_window(app_factory: AppFactory, redis_db: redis.Redis) -> None:
    async with app_factory(client_auth_failure_limit=2, client_auth_failure_window=1,
                           argon2_per_worker=True) as http:
        client = await new_client(http)
        cid = client["client_id"]
        for _ in range(2):
            assert (await attempt(http, cid, "wrong")).status_code == 401
        assert 0 < redis_db.pttl(keys.client_auth_failures(cid)) <= 1000
        assert_throttled(await attempt(http, cid, client["client_secret"]), window=1)
        # A real timer, not only a Redis TTL: the worker remembers the throttle on its own clock.
        await asyncio.sleep(1.1)
        assert not redis_db.exists(keys.client_auth_failures(cid))
        assert (await attempt(http, cid, client["client_secret"])).status_code == 200
        # The success gave its reservation back: no counter is left behind.
        assert not redis_db.exists(keys.client_auth_failures(cid))
        assert (await attempt(http, cid, "wrong")).status_code == 401  # a new window


async def test_cached_secret_keeps_working_during_an_attack(app_factory: AppFactory) -> None:
    """The legitimate client, whose secret this worker already verified, is not locked out by
    an attacker's guesses: the cached match is served without looking at the counter."""
    async with app_factory(client_auth_failure_limit=LIMIT) as http:
        client = await new_client(http)
        cid, secret = client["client_id"], client["client_secret"]
        assert (await attempt(http, cid, secret)).status_code == 200  # verified and cached
        for _ in range(LIMIT):
            assert (await attempt(http, cid, "guess")).status_code == 401
        assert_throttled(await attempt(http, cid, "guess"))
        clients = directory(http)
        runs, hits = clients.argon2_runs, clients.cache_hits
        for _ in range(5):
            assert (await attempt(http, cid, secret)).status_code == 200
            assert_throttled(await attempt(http, cid, "guess"))
        assert clients.argon2_runs == runs
        assert clients.cache_hits == hits + 5


async def test_concurrent_guesses_cannot_outrun_the_limit(app_factory: AppFactory) -> None:
    async with app_factory(client_auth_failure_limit=LIMIT) as http:
        client = await new_client(http)
        cid = client["client_id"]
        clients = directory(http)
        runs = clients.argon2_runs
        answers = await asyncio.gather(*(attempt(http, cid, f"guess-{i}") for i in range(20)))
        statuses = sorted(r.status_code for r in answers)
        assert statuses == [401] * LIMIT + [429] * (20 - LIMIT)
        assert clients.argon2_runs - runs == LIMIT


async def test_unknown_and_public_clients_create_no_counters(app_factory: AppFactory,
                                                            redis_db: redis.Redis) -> None:
    async with app_factory(client_auth_failure_limit=LIMIT) as http:
        public = await new_client(http, name="spa", token_endpoint_auth_method="none")
        for _ in range(3 * LIMIT):
            assert (await attempt(http, uuid.uuid4().hex, "wrong")).status_code == 401
            assert (await attempt(http, "same-unknown", "wrong")).status_code == 401
            assert (await attempt(http, public["client_id"], "wrong")).status_code == 401
        assert authfail_keys(redis_db) == []
        # A right secret verified with argon2 leaves no counter behind either.
        client = await new_client(http)
        assert (await attempt(http, client["client_id"], client["client_secret"])).status_code == 200
        assert authfail_keys(redis_db) == []


async def test_other_clients_are_unaffected(app_factory: AppFactory) -> None:
    async with app_factory(client_auth_failure_limit=LIMIT) as http:
        victim = await new_client(http)
        other = await new_client(http, name="other")
        for _ in range(LIMIT):
            await attempt(http, victim["client_id"], "wrong")
        assert_throttled(await attempt(http, victim["client_id"], "wrong"))
        assert (await attempt(http, other["client_id"], "wrong")).status_code == 401
        assert (await attempt(http, other["client_id"], other["client_secret"])).status_code == 200


async def test_successes_do_not_count_and_failures_stay(app_factory: AppFactory,
                                                       redis_db: redis.Redis) -> None:
    async with app_factory(client_auth_failure_limit=LIMIT) as http:
        client = await new_client(http)
        cid = client["client_id"]
        for _ in range(LIMIT - 1):
            assert (await attempt(http, cid, "wrong")).status_code == 401
        assert (await attempt(http, cid, client["client_secret"])).status_code == 200
        assert int(redis_db.get(keys.client_auth_failures(cid)) or 0) == LIMIT - 1
        assert (await attempt(http, cid, "wrong")).status_code == 401
        assert_throttled(await attempt(http, cid, "wrong"))


async def test_local_refusal_needs_no_redis(app_factory: AppFactory, redis_db: redis.Redis) -> None:
    """The worker that saw the limit reached refuses from memory until the window ends."""
    async with app_factory(client_auth_failure_limit=LIMIT) as http:
        client = await new_client(http)
        cid = client["client_id"]
        for _ in range(LIMIT):
            await attempt(http, cid, "wrong")
        # Drop the counter behind the worker's back: it still refuses, from its own map.
        redis_db.delete(keys.client_auth_failures(cid))
        assert_throttled(await attempt(http, cid, "wrong"))
        assert not redis_db.exists(keys.client_auth_failures(cid))


@pytest.mark.parametrize("name, raw", [
    ("CLIENT_AUTH_FAILURE_LIMIT", "0"), ("CLIENT_AUTH_FAILURE_LIMIT", "many"),
    ("CLIENT_AUTH_FAILURE_WINDOW", "0"), ("CLIENT_AUTH_FAILURE_WINDOW", "86401"),
])
def test_settings_are_validated(name: str, raw: str) -> None:
    with pytest.raises(SettingsError, match=f"TOKENSVC_{name}"):
        load(environ={f"TOKENSVC_{name}": raw})


def test_settings_defaults_and_parsing() -> None:
    default = load(environ={})
    assert (default.client_auth_failure_limit, default.client_auth_failure_window) == (20, 60)
    got = load(environ={"TOKENSVC_CLIENT_AUTH_FAILURE_LIMIT": "5",
                        "TOKENSVC_CLIENT_AUTH_FAILURE_WINDOW": "1"})
    assert (got.client_auth_failure_limit, got.client_auth_failure_window) == (5, 1)
