"""Server keys agree across the fleet: the start-up check and the choice of the signing key."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest
import redis

from tests.support.api import active, new_client
from tests.support.apps import AppFactory
from tests.support.config import SECRET_KEY
from tokensvc.fleet import SIGNING, WORKERS, KeyMismatch
from tokensvc.keyring import Keyring, fingerprint

NEW_KEY = "a-new-server-key-0123456789abcdef0123456789"
FOREIGN_KEY = "a-foreign-server-key-0123456789abcdef012345"
CC = {"grant_type": "client_credentials"}


def keyring(http: httpx.AsyncClient) -> Keyring:
    found = http.app.state.services.codec.keyring  # type: ignore[attr-defined]
    assert isinstance(found, Keyring)
    return found


async def issue(http: httpx.AsyncClient, client: dict[str, str]) -> str:
    resp = await http.post("/oauth/token", data={**CC, "client_id": client["client_id"],
                                                 "client_secret": client["client_secret"]})
    assert resp.status_code == 200, resp.text
    token: str = resp.json()["access_token"]
    return token


async def until(check: Callable[[], bool], what: str, limit: float = 5.0) -> None:
    for _ in range(int(limit / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def test_an_instance_with_foreign_keys_refuses_to_start(
        app_factory: AppFactory, redis_db: redis.Redis) -> None:
    async with app_factory():
        with pytest.raises(KeyMismatch, match="TOKENSVC_SECRET_KEYS"):
            async with app_factory(secret_keys=(FOREIGN_KEY,)):
                pass
    # No worker is live now; the deployment's signing key is still recorded, and it is checked.
    assert redis_db.hlen(WORKERS) == 0
    assert redis_db.get(SIGNING) == fingerprint(SECRET_KEY).encode()
    with pytest.raises(KeyMismatch, match=fingerprint(SECRET_KEY)):
        async with app_factory(secret_keys=(FOREIGN_KEY,)):
            pass
    # Deleting the record starts the deployment afresh, as the message says.
    redis_db.delete(SIGNING)
    async with app_factory(secret_keys=(FOREIGN_KEY,)) as http:
        assert keyring(http).signing_fingerprint == fingerprint(FOREIGN_KEY)


async def test_a_new_key_signs_only_once_every_worker_accepts_it(app_factory: AppFactory) -> None:
    """The roll: old [K1] beside new [K2, K1]; the new one signs with K1 until the old is gone."""
    async with app_factory(fleet_heartbeat=0.05) as old:
        client = await new_client(old)
        before = await issue(old, client)
        async with app_factory(secret_keys=(NEW_KEY, SECRET_KEY), fleet_heartbeat=0.05) as new:
            assert keyring(new).signing_fingerprint == fingerprint(SECRET_KEY)
            during = await issue(new, client)
            # The old instance accepts what the new one signs, and the other way round.
            assert await active(old, client, during) and await active(new, client, before)
            async with app_factory(secret_keys=(NEW_KEY, SECRET_KEY), fleet_heartbeat=0.05) as newer:
                await asyncio.sleep(0.2)
                assert keyring(newer).signing_fingerprint == fingerprint(SECRET_KEY)
        # The old instance left: the new ones switch to the new key within a beat.
    async with app_factory(secret_keys=(NEW_KEY, SECRET_KEY), fleet_heartbeat=0.05) as a, \
            app_factory(secret_keys=(NEW_KEY, SECRET_KEY), fleet_heartbeat=0.05) as b:
        await until(lambda: keyring(a).signing == 0 and keyring(b).signing == 0, "the new key")
        after = await issue(a, client)
        for token in (before, during, after):
            assert await active(b, client, token)
        # An instance with only the old key would now refuse what the fleet signs: refused.
        with pytest.raises(KeyMismatch):
            async with app_factory(fleet_heartbeat=0.05):
                pass
    # The old key dropped after the longest token lifetime: the new key alone still starts.
    async with app_factory(secret_keys=(NEW_KEY,)) as last:
        assert await active(last, client, after)
        assert not await active(last, client, before)  # signed with the dropped key


async def test_workers_leave_the_registry_when_they_stop(app_factory: AppFactory,
                                                          redis_db: redis.Redis) -> None:
    async with app_factory(fleet_heartbeat=0.05), app_factory(fleet_heartbeat=0.05):
        assert redis_db.hlen(WORKERS) == 2
        entries = [str(v, "utf-8").split(" ") for v in redis_db.hvals(WORKERS)]  # type: ignore[arg-type]
        assert all(sig == fingerprint(SECRET_KEY) and acc == fingerprint(SECRET_KEY)
                   for _, sig, acc in entries)
    assert redis_db.hlen(WORKERS) == 0


async def test_a_dead_workers_entry_expires(app_factory: AppFactory, redis_db: redis.Redis) -> None:
    """A worker killed without leaving stops counting after three missed beats."""
    redis_db.hset(WORKERS, "ghost:1:abcd", f"1 {fingerprint(FOREIGN_KEY)} {fingerprint(FOREIGN_KEY)}")
    async with app_factory(fleet_heartbeat=0.05):
        await asyncio.sleep(0.2)
        assert not redis_db.hexists(WORKERS, "ghost:1:abcd")
