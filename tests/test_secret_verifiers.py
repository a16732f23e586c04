"""argon2 at most once per client secret per deployment: keyed verifiers beside the hash, the
LRU client cache, and the throttle that still guards every secret that does not match."""

from __future__ import annotations

import dataclasses
from typing import Any

import httpx
import orjson
import pytest
import redis

from tests.support.api import new_client
from tests.support.apps import AppFactory
from tests.support.config import ADMIN, SECRET_KEY
from tokensvc.clients import ClientDirectory
from tokensvc.keyring import Keyring, key_id
from tokensvc.lru import LRU
from tokensvc.store import keys
from tokensvc.store.redis import RedisStore

OTHER_KEY = "another-server-key-0123456789abcdef01234"
CC = {"grant_type": "client_credentials"}


def directory(http: httpx.AsyncClient) -> ClientDirectory:
    found = http.app.state.services.clients  # type: ignore[attr-defined]
    assert isinstance(found, ClientDirectory)
    return found


def store_of(http: httpx.AsyncClient) -> RedisStore:
    found = http.app.state.services.store  # type: ignore[attr-defined]
    assert isinstance(found, RedisStore)
    return found


def record(redis_db: redis.Redis, client_id: str) -> dict[str, Any]:
    raw = redis_db.get(keys.client(client_id))
    assert isinstance(raw, bytes)
    doc: dict[str, Any] = orjson.loads(raw)
    return doc


async def token(http: httpx.AsyncClient, client: dict[str, Any], secret: str | None = None) -> httpx.Response:
    return await http.post("/oauth/token", data={**CC, "client_id": client["client_id"],
                                                 "client_secret": secret or client["client_secret"]})


def runs(http: httpx.AsyncClient) -> tuple[int, int]:
    d = directory(http)
    return d.argon2_runs, d.cache_hits


async def test_a_new_secret_never_goes_through_argon2_on_any_worker(app_factory: AppFactory) -> None:
    async with app_factory() as a, app_factory() as b:
        client = await new_client(a)
        for http in (a, b, a, b):
            assert (await token(http, client)).status_code == 200
        assert runs(a) == (0, 2) and runs(b) == (0, 2)
    # A worker started afterwards: nothing cached, still no argon2.
    async with app_factory() as fresh:
        assert (await token(fresh, client)).status_code == 200
        assert runs(fresh) == (0, 1)


async def test_the_verifier_at_rest_is_keyed_and_holds_no_secret(
        app_factory: AppFactory, redis_db: redis.Redis) -> None:
    async with app_factory() as http:
        client = await new_client(http)
    doc = record(redis_db, client["client_id"])
    kid, _, mac = doc["secret_verifier"].partition(":")
    assert kid == key_id(SECRET_KEY)
    assert client["client_secret"] not in doc["secret_verifier"]
    # The same secret under another server key gives another verifier: without the key, the
    # stored value cannot even check a guess.
    other = Keyring([OTHER_KEY]).secret_verifier(client["client_id"], client["client_secret"])
    assert other.partition(":")[2] != mac
    assert Keyring([SECRET_KEY]).verifier_matches(doc["secret_verifier"], client["client_id"],
                                                  client["client_secret"]) is True
    # The admin API never shows it.
    async with app_factory() as http:
        shown = (await http.get(f"/admin/clients/{client['client_id']}", headers=ADMIN)).json()
    assert "secret_verifier" not in shown and "secret_hash" not in shown


async def test_an_older_record_is_verified_once_then_never_again(
        app_factory: AppFactory, redis_db: redis.Redis) -> None:
    """A record written before verifiers: the first argon2 check anywhere writes one."""
    async with app_factory() as http:
        client = await new_client(http)
    doc = record(redis_db, client["client_id"])
    del doc["secret_verifier"]
    redis_db.set(keys.client(client["client_id"]), orjson.dumps(doc))
    async with app_factory() as a:
        for _ in range(3):
            assert (await token(a, client)).status_code == 200
        assert runs(a) == (1, 2)
    assert record(redis_db, client["client_id"])["secret_verifier"].startswith(key_id(SECRET_KEY) + ":")
    async with app_factory() as b, app_factory() as c:
        assert (await token(b, client)).status_code == 200
        assert (await token(c, client)).status_code == 200
        assert runs(b) == (0, 1) and runs(c) == (0, 1)


async def test_a_verifier_under_a_retired_key_is_replaced_after_one_argon2(
        app_factory: AppFactory, redis_db: redis.Redis) -> None:
    async with app_factory() as http:
        client = await new_client(http)
    # The deployment starts afresh on a new key (the old one dropped): the stored verifier
    # names a key nobody holds any more.
    redis_db.delete("tsv:{fleet}:workers", "tsv:{fleet}:signing")
    async with app_factory(secret_keys=(OTHER_KEY,)) as http:
        assert (await token(http, client)).status_code == 200
        assert (await token(http, client)).status_code == 200
        assert runs(http) == (1, 1)
    assert record(redis_db, client["client_id"])["secret_verifier"].startswith(key_id(OTHER_KEY) + ":")


async def test_a_wrong_secret_still_costs_argon2_and_counts_toward_the_throttle(
        app_factory: AppFactory, redis_db: redis.Redis) -> None:
    async with app_factory(client_auth_failure_limit=3) as http:
        client = await new_client(http)
        cid = client["client_id"]
        for n in range(1, 4):
            assert (await token(http, client, "tsv_cs_wrong")).status_code == 401
            assert runs(http) == (n, 0)
            assert int(redis_db.get(keys.client_auth_failures(cid)) or 0) == n
        # The limit is reached: guesses are refused without argon2 ...
        refused = await token(http, client, "tsv_cs_another_guess")
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert runs(http) == (3, 0)
        # ... while the real secret, matching the verifier, is never locked out by them.
        assert (await token(http, client)).status_code == 200
        assert runs(http) == (3, 1)


async def test_rotation_and_revocation_refuse_the_old_secret_everywhere_at_once(
        app_factory: AppFactory, redis_db: redis.Redis) -> None:
    async with app_factory() as a, app_factory() as b:
        client = await new_client(a)
        assert (await token(b, client)).status_code == 200  # cached on b
        before = record(redis_db, client["client_id"])["secret_verifier"]
        rotated = await a.post(f"/admin/clients/{client['client_id']}/secret", headers=ADMIN)
        assert rotated.status_code == 200
        new_secret = rotated.json()["client_secret"]
        assert (await token(b, client)).status_code == 401
        assert (await token(b, client, new_secret)).status_code == 200
        after = record(redis_db, client["client_id"])["secret_verifier"]
        assert after != before
        assert directory(b).argon2_runs == 1  # the refused old secret; the new one matched
        deleted = await a.delete(f"/admin/clients/{client['client_id']}", headers=ADMIN)
        assert deleted.status_code == 204
        assert (await token(b, client, new_secret)).status_code == 401
        assert not redis_db.exists(keys.client(client["client_id"]))


async def test_a_verifier_is_never_written_over_a_rotation(
        app_factory: AppFactory, redis_db: redis.Redis) -> None:
    """The check-then-write race: a worker verified the old secret, the secret is rotated, then
    the worker writes its verifier. The write must not happen, or the old secret would open the
    client again."""
    async with app_factory() as http:
        client = await new_client(http)
        store = store_of(http)
        stale = await store.get_client(client["client_id"])
        assert stale is not None
        stale = dataclasses.replace(stale, secret_verifier=None)
        rotated = await http.post(f"/admin/clients/{client['client_id']}/secret", headers=ADMIN)
        assert rotated.status_code == 200
        kept = redis_db.get(keys.client(client["client_id"]))
        old = Keyring([SECRET_KEY]).secret_verifier(client["client_id"], client["client_secret"])
        assert await store.add_secret_verifier(stale, old) is None
        assert redis_db.get(keys.client(client["client_id"])) == kept
        assert (await token(http, client)).status_code == 401


async def test_argon2_per_worker_keeps_no_verifier(app_factory: AppFactory, redis_db: redis.Redis) -> None:
    async with app_factory(argon2_per_worker=True) as http:
        client = await new_client(http)
        assert record(redis_db, client["client_id"])["secret_verifier"] is None
        for _ in range(3):
            assert (await token(http, client)).status_code == 200
        assert runs(http) == (1, 2)
        assert record(redis_db, client["client_id"])["secret_verifier"] is None


# -- the client cache ------------------------------------------------------------------------

def test_lru_evicts_the_least_recently_used() -> None:
    cache: LRU[str, int] = LRU(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert "b" not in cache and cache.peek("a") == 1 and cache.peek("c") == 3
    assert cache.peek("a") == 1
    cache.put("d", 4)  # peek did not refresh a: a goes
    assert "a" not in cache and len(cache) == 2
    with pytest.raises(ValueError):
        LRU(0)


async def test_a_busy_client_stays_cached_among_many(app_factory: AppFactory) -> None:
    """With room for 2 records, a client used between every other one is never evicted (an
    oldest-first cache would drop it every other request)."""
    async with app_factory(secret_cache_size=2) as http:
        busy = await new_client(http, name="busy")
        others = [await new_client(http, name=f"other {i}") for i in range(4)]
        cache = directory(http)
        reads: list[int] = []
        store = store_of(http)
        original = store.get_client

        async def counting(client_id: str) -> Any:
            reads.append(1 if client_id == busy["client_id"] else 0)
            return await original(client_id)

        store.get_client = counting  # type: ignore[method-assign]
        for other in others:
            assert (await token(http, busy)).status_code == 200
            assert (await token(http, other)).status_code == 200
        assert sum(reads) == 1  # the busy client was read from Redis once
        assert len(cache._entries) == 2
