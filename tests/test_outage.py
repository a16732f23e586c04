"""Storage outage: 503 temporarily_unavailable with Retry-After, fast, never a hang or a 500;
service resumes by itself when Redis is back."""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis

from tests.support.api import auth, cc_token, introspect, new_client, new_user, password_token
from tests.support.apps import AppFactory
from tests.support.assertions import assert_error, bearer_challenge
from tests.support.config import ADMIN
from tests.support.redis_servers import RedisServer
from tests.support.stored import data_keys
from tokensvc.clients import ClientDirectory

BOUND = 3.0  # seconds any request may take while Redis is down or hung
# Each Redis call gives up after the redis_timeout setting (0.5 s in tests) and the first failure
# ends the request, so a hung Redis costs one timeout, not several.
REDIS_TIMEOUT = 0.5
UNAVAILABLE = {"error": "temporarily_unavailable",
               "error_description": "Storage is unavailable; retry shortly.",
               "message": "Storage is unavailable; retry shortly."}
_names = itertools.count()


@dataclass
class World:
    """A client with tokens, a resource server and a user, made while Redis is up."""

    client: dict[str, Any]
    rs: dict[str, Any]
    username: str
    cc: str
    at: str
    rt: str


async def make_world(http: httpx.AsyncClient) -> World:
    client = await new_client(http)
    rs = await new_client(http, name="resource server", introspection="all")
    username = f"user-{next(_names)}"
    await new_user(http, username)
    cc = await cc_token(http, client)
    assert cc.status_code == 200, cc.text
    tokens = await password_token(http, client, username=username)
    assert tokens.status_code == 200, tokens.text
    # Warm this instance's cache: the next checks of these secrets need no Redis read.
    assert (await introspect(http, rs, cc.json()["access_token"]))["active"] is True
    return World(client, rs, username, cc.json()["access_token"], tokens.json()["access_token"],
                 tokens.json()["refresh_token"])


Call = Callable[[httpx.AsyncClient, World], Awaitable[httpx.Response]]

# name, request, status once Redis is back
CALLS: list[tuple[str, Call, int]] = [
    ("token client_credentials", lambda h, w: cc_token(h, w.client), 200),
    ("token password", lambda h, w: password_token(h, w.client, username=w.username), 200),
    ("token refresh", lambda h, w: h.post("/oauth/token", data={
        "grant_type": "refresh_token", "refresh_token": w.rt}, auth=auth(w.client)), 200),
    ("introspect", lambda h, w: h.post("/oauth/introspect", data={"token": w.at}, auth=auth(w.rs)), 200),
    ("revoke", lambda h, w: h.post("/oauth/revoke", data={"token": w.rt}, auth=auth(w.client)), 200),
    ("revoke finAPI", lambda h, w: h.post("/oauth/revoke", params={"token": w.rt},
                                          headers={"Authorization": f"Bearer {w.cc}"}), 200),
    ("login", lambda h, w: h.post("/login", headers={"Authorization": f"Bearer {w.at}"}), 200),
    ("userinfo", lambda h, w: h.get("/oauth/userinfo", headers={"Authorization": f"Bearer {w.cc}"}),
     200),
    ("admin list clients", lambda h, w: h.get("/admin/clients", headers=ADMIN), 200),
    ("admin create client", lambda h, w: h.post("/admin/clients", json={"name": "n"}, headers=ADMIN),
     201),
    ("admin get client", lambda h, w: h.get(f"/admin/clients/{w.client['client_id']}",
                                            headers=ADMIN), 200),
    ("admin patch client", lambda h, w: h.patch(f"/admin/clients/{w.client['client_id']}",
                                                json={"name": "renamed"}, headers=ADMIN), 200),
    ("admin rotate secret", lambda h, w: h.post(f"/admin/clients/{w.client['client_id']}/secret",
                                                headers=ADMIN), 200),
    ("admin delete client", lambda h, w: h.delete(f"/admin/clients/{w.client['client_id']}",
                                                  headers=ADMIN), 204),
    ("admin create user", lambda h, w: h.post("/admin/users", headers=ADMIN, json={
        "username": f"new-{w.username}", "password": "long enough"}), 201),
    ("admin get user", lambda h, w: h.get(f"/admin/users/{w.username}", headers=ADMIN), 200),
    ("admin patch user", lambda h, w: h.patch(f"/admin/users/{w.username}", json={"verified": False},
                                              headers=ADMIN), 200),
    ("admin unlock user", lambda h, w: h.post(f"/admin/users/{w.username}/unlock", headers=ADMIN), 204),
    ("admin delete user", lambda h, w: h.delete(f"/admin/users/{w.username}", headers=ADMIN), 204),
    ("readyz", lambda h, w: h.get("/readyz"), 200),
]


def assert_unavailable(name: str, resp: httpx.Response, elapsed: float) -> None:
    assert elapsed < min(BOUND, 2 * REDIS_TIMEOUT), f"{name} took {elapsed:.2f} s"
    assert resp.status_code == 503, f"{name}: {resp.status_code} {resp.text}"
    body = resp.json()
    if name == "readyz":
        assert body == {**UNAVAILABLE, "status": "unavailable", "redis": False}
    else:
        assert body == UNAVAILABLE, name
    assert resp.headers["retry-after"] == "1", name
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers["cache-control"] == "no-store" and resp.headers["pragma"] == "no-cache"


async def timed(call: Call, http: httpx.AsyncClient, world: World) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    # A hang must show up as a test failure, not as a stuck test run.
    resp = await asyncio.wait_for(call(http, world), timeout=BOUND * 3)
    return resp, time.monotonic() - started


async def assert_still_alive(http: httpx.AsyncClient) -> None:
    health = await http.get("/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    metrics = await http.get("/metrics")
    assert metrics.status_code == 200


async def assert_all_succeed(http: httpx.AsyncClient) -> None:
    for name, call, status in CALLS:
        world = await make_world(http)
        resp, elapsed = await timed(call, http, world)
        assert resp.status_code == status, f"{name}: {resp.status_code} {resp.text}"
        assert elapsed < BOUND


async def test_redis_stopped_then_restarted(app_factory: AppFactory, redis_server: RedisServer,
                                            redis_db: redis.Redis) -> None:
    async with app_factory() as http:
        world = await make_world(http)
        redis_server.stop()
        try:
            for name, call, _ in CALLS:
                resp, elapsed = await timed(call, http, world)
                assert_unavailable(name, resp, elapsed)
            await assert_still_alive(http)
            # Still 503 on a second round: nothing got stuck or crashed the first time.
            for name, call, _ in CALLS:
                resp, elapsed = await timed(call, http, world)
                assert_unavailable(name, resp, elapsed)
        finally:
            redis_server.start()
        # The same app, not restarted: its connections come back by themselves. Redis kept no
        # data, so the clients, users and tokens are made again.
        assert data_keys(redis_db) == []
        await assert_all_succeed(http)
        clients = http.app.state.services.clients  # type: ignore[attr-defined]
        assert isinstance(clients, ClientDirectory)
        deadline = time.monotonic() + 10
        while not clients.live:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        ready = await http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ok", "redis": True, "invalidation": True}


@pytest.mark.slow
async def test_redis_hung(app_factory: AppFactory, redis_server: RedisServer,
                          redis_db: redis.Redis) -> None:
    async with app_factory() as http:
        world = await make_world(http)
        proc = redis_server.proc
        assert proc is not None
        proc.send_signal(signal.SIGSTOP)
        try:
            for name, call, _ in CALLS:
                resp, elapsed = await timed(call, http, world)
                assert_unavailable(name, resp, elapsed)
            await assert_still_alive(http)
        finally:
            proc.send_signal(signal.SIGCONT)
        # Nothing was lost: the very same client, user and tokens work again.
        resp = await cc_token(http, world.client)
        assert resp.status_code == 200, resp.text
        assert (await introspect(http, world.rs, world.at))["active"] is True
        login = await http.post("/login", headers={"Authorization": f"Bearer {world.at}"})
        assert login.status_code == 200, login.text
        await assert_all_succeed(http)


async def test_forged_token_needs_no_redis(app_factory: AppFactory, redis_server: RedisServer,
                                           redis_db: redis.Redis) -> None:
    """A token this service never minted is refused by its tag, even with Redis down."""
    async with app_factory() as http:
        redis_server.stop()
        try:
            resp = await http.post("/login", headers={"Authorization": "Bearer tsv_at_forged"})
            description = "The access token is invalid, expired or revoked."
            assert_error(resp, 401, "invalid_token", description, bearer_challenge(description))
        finally:
            redis_server.start()
