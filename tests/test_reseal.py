"""client_secret_jwt secrets sealed anew when the fleet signs with a new server key (reseal.py),
so the key rotation's last step (dropping the old key) leaves every such client working.

In-process apps on the real redis-server and on the real Redis Cluster, each with the server
keys a step of the rotation gives it."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import replace
from typing import Any

import httpx
import jwt
import orjson
import pytest
import redis

from tests.support.apps import ON_SINGLE_AND_CLUSTER, AppFactory
from tests.support.config import ADMIN, ISSUER, SECRET_KEY
from tokensvc.fleet import SIGNING
from tokensvc.keyring import Keyring, key_id
from tokensvc.reseal import Resealer
from tokensvc.services import Services
from tokensvc.store import keys

pytestmark = ON_SINGLE_AND_CLUSTER
NEW_KEY = "a-new-server-key-0123456789abcdef0123456789"
OTHER_KEY = "a-key-no-instance-holds-0123456789abcdef012"
TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def sealed_under(redis_db: redis.Redis, client_id: str) -> str:
    raw = redis_db.get(keys.client(client_id))
    assert isinstance(raw, bytes)
    sealed: str = orjson.loads(raw)["secret_sealed"]
    return Keyring.sealed_under(sealed)


async def create(http: httpx.AsyncClient) -> dict[str, Any]:
    resp = await http.post("/admin/clients", headers=ADMIN, json={
        "name": "hmac client", "scopes": ["read"], "grant_types": ["client_credentials"],
        "token_endpoint_auth_method": "client_secret_jwt"})
    assert resp.status_code == 201, resp.text
    doc: dict[str, Any] = resp.json()
    return doc


async def token(http: httpx.AsyncClient, client: dict[str, Any]) -> httpx.Response:
    now = int(time.time())
    cid = client["client_id"]
    assertion = jwt.encode({"iss": cid, "sub": cid, "aud": ISSUER, "iat": now, "exp": now + 60,
                            "jti": str(uuid.uuid4())}, client["client_secret"], "HS256")
    return await http.post("/oauth/token", data={"grant_type": "client_credentials",
                                                 "client_assertion_type": TYPE,
                                                 "client_assertion": assertion})


def services(http: httpx.AsyncClient) -> Services:
    svc: Services = http.app.state.services  # type: ignore[attr-defined]
    return svc


async def test_the_rotation_keeps_client_secret_jwt_clients_working(app_factory: AppFactory,
                                                                    redis_db: redis.Redis) -> None:
    async with app_factory(secret_keys=(SECRET_KEY,)) as old:
        client = await create(old)
        assert (await token(old, client)).status_code == 200
    assert sealed_under(redis_db, client["client_id"]) == key_id(SECRET_KEY)
    # Step 1: the new key first. The fleet signs with it (no instance lacks it), and the
    # instance's first sweep seals the secret anew under it.
    async with app_factory(secret_keys=(NEW_KEY, SECRET_KEY)) as both:
        for _ in range(200):
            if sealed_under(redis_db, client["client_id"]) == key_id(NEW_KEY):
                break
            await asyncio.sleep(0.02)
        assert sealed_under(redis_db, client["client_id"]) == key_id(NEW_KEY)
        assert (await token(both, client)).status_code == 200
    # Step 2: the old key dropped. The client still authenticates.
    async with app_factory(secret_keys=(NEW_KEY,)) as new:
        resp = await token(new, client)
        assert resp.status_code == 200, resp.text


async def test_a_sweep_reseals_once_and_again_only_after_a_write(app_factory: AppFactory,
                                                                 redis_db: redis.Redis) -> None:
    async with app_factory(secret_keys=(SECRET_KEY,)) as old:
        client = await create(old)
    cid = client["client_id"]
    async with app_factory(secret_keys=(NEW_KEY, SECRET_KEY)) as both:
        svc = services(both)
        svc.resealer.stop()
        sweep = Resealer(svc.store, Keyring((NEW_KEY, SECRET_KEY)), 60).sweep
        await sweep()  # the first, or the app's own first sweep got there before it
        assert sealed_under(redis_db, cid) == key_id(NEW_KEY)
        assert redis_db.hget(keys.SEALED_STATE, "swept") == f"{key_id(NEW_KEY)} 1".encode()
        assert await sweep() == 0
        # A secret written under the old key after that (by an instance that had not switched
        # yet) makes the stamp stale: the next pass seals it anew.
        current = await svc.store.get_client(cid)
        assert current is not None
        under_old = Keyring((SECRET_KEY,)).seal_client_secret(cid, client["client_secret"])
        assert await svc.store.put_client(replace(current, secret_sealed=under_old), new=False,
                                          previous=current)
        assert sealed_under(redis_db, cid) == key_id(SECRET_KEY)
        assert await sweep() == 1
        assert sealed_under(redis_db, cid) == key_id(NEW_KEY)
        assert redis_db.hget(keys.SEALED_STATE, "swept") == f"{key_id(NEW_KEY)} 2".encode()
    async with app_factory(secret_keys=(NEW_KEY,)) as new:
        assert (await token(new, client)).status_code == 200


async def test_a_secret_under_a_key_the_instance_lacks_is_left_and_the_sweep_stays_open(
        app_factory: AppFactory, redis_db: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    async with app_factory(secret_keys=(OTHER_KEY,)) as other:
        client = await create(other)
    # A deployment started afresh on other keys, the secret left over from before.
    redis_db.delete(SIGNING, keys.SIGNING_KEYS)
    redis_db.hdel(keys.SEALED_STATE, "swept")
    async with app_factory(secret_keys=(NEW_KEY, SECRET_KEY)) as both:
        svc = services(both)
        svc.resealer.stop()
        resealer = Resealer(svc.store, Keyring((NEW_KEY, SECRET_KEY)), 60)
        with caplog.at_level(logging.WARNING, logger="tokensvc.reseal"):
            caplog.clear()
            assert await resealer.sweep() == 0
            said = [r.getMessage() for r in caplog.records if r.name == "tokensvc.reseal"]
            assert await resealer.sweep() == 0
        assert said and set(said) == {"1 client_secret_jwt secret(s) are sealed under a server key "
                                      "this instance does not hold; they will be sealed anew by one "
                                      "that does"}
        # Said once, not at every beat while it stands.
        assert [r.getMessage() for r in caplog.records if r.name == "tokensvc.reseal"] == said
        assert sealed_under(redis_db, client["client_id"]) == key_id(OTHER_KEY)
        assert redis_db.hget(keys.SEALED_STATE, "swept") is None
        # Only the record as read is swapped: a secret changed meanwhile is left alone.
        assert not await svc.store.reseal_client_secret(client["client_id"], "x.y", "z.w")
        assert sealed_under(redis_db, client["client_id"]) == key_id(OTHER_KEY)
        # An instance holding that key seals it anew and closes the sweep.
        holder = Resealer(svc.store, Keyring((NEW_KEY, OTHER_KEY)), 60)
        assert await holder.sweep() == 1
        assert sealed_under(redis_db, client["client_id"]) == key_id(NEW_KEY)
        assert redis_db.hget(keys.SEALED_STATE, "swept") is not None


async def test_the_index_follows_the_method_and_the_client(http: httpx.AsyncClient,
                                                           redis_db: redis.Redis) -> None:
    client = await create(http)
    cid = client["client_id"]
    assert redis_db.smembers(keys.SEALED_CLIENTS) == {cid.encode()}
    resp = await http.post(f"/admin/clients/{cid}/secret", headers=ADMIN,
                           json={"token_endpoint_auth_method": "client_secret_basic"})
    assert resp.status_code == 200, resp.text
    assert redis_db.smembers(keys.SEALED_CLIENTS) == set()
    again = await create(http)
    assert (await http.delete(f"/admin/clients/{again['client_id']}", headers=ADMIN)).status_code == 204
    assert redis_db.smembers(keys.SEALED_CLIENTS) == set()
    # A client that never had a sealed secret costs the index nothing.
    resp = await http.post("/admin/clients", headers=ADMIN, json={"name": "basic", "scopes": ["read"]})
    assert resp.status_code == 201
    assert redis_db.exists(keys.SEALED_CLIENTS) == 0
