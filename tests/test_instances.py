"""Several instances on one Redis: each has its own client cache and invalidation subscription.

A change made through one instance must hold on every other instance from the very next
request, and an instance whose subscription is down must not trust its cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import redis

from tests.support.api import auth, cc_token, introspect, new_client, new_user, password_token
from tests.support.apps import AppFactory, running_app
from tests.support.assertions import assert_error, bearer_challenge
from tests.support.config import ADMIN, make_settings
from tests.support.redis_servers import RedisServer
from tokensvc.clients import ClientDirectory

Pair = tuple[httpx.AsyncClient, httpx.AsyncClient]
BASIC = 'Basic realm="tokensvc"'
BAD_BEARER = bearer_challenge("The access token is invalid, expired or revoked.")


def directory(http: httpx.AsyncClient) -> ClientDirectory:
    clients = http.app.state.services.clients  # type: ignore[attr-defined]
    assert isinstance(clients, ClientDirectory)
    return clients


async def wait_for(predicate: Callable[[], bool], what: str, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def assert_invalid_client(resp: httpx.Response, description: str = "Client authentication failed.",
                          basic: bool = True) -> None:
    assert_error(resp, 401, "invalid_client", description, BASIC if basic else None)


def assert_token(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    assert resp.headers["cache-control"] == "no-store" and resp.headers["pragma"] == "no-cache"
    body: dict[str, Any] = resp.json()
    assert body["token_type"] == "Bearer" and body["access_token"].startswith("tsv_at_")
    return body


def instance(redis_url: str, **overrides: Any) -> contextlib.AbstractAsyncContextManager[httpx.AsyncClient]:
    """An app on a Redis URL of our choosing (app_factory always uses the default user), not
    waiting for its subscription, which may be what the test keeps down."""
    return running_app(make_settings(redis_url, **overrides), wait_live=False)


@pytest.fixture
async def pair(app_factory: AppFactory) -> AsyncIterator[Pair]:
    async with app_factory() as a, app_factory() as b:
        assert a.app is not b.app  # type: ignore[attr-defined]
        assert directory(a) is not directory(b)
        assert directory(a).live and directory(b).live
        yield a, b


async def warm(b: httpx.AsyncClient, client: dict[str, Any]) -> None:
    """Authenticate on B until its cache holds the client with the verified secret."""
    d = directory(b)
    assert_token(await cc_token(b, client))
    runs = d.argon2_runs
    hits = d.cache_hits
    assert_token(await cc_token(b, client))
    # The second request was served from B's cache: no argon2 run.
    assert d.argon2_runs == runs and d.cache_hits == hits + 1


async def test_secret_rotated_on_a_is_refused_by_b_on_the_very_next_request(pair: Pair) -> None:
    a, b = pair
    client = await new_client(a)
    await warm(b, client)

    rotated = await a.post(f"/admin/clients/{client['client_id']}/secret", headers=ADMIN)
    assert rotated.status_code == 200, rotated.text
    new_secret = rotated.json()["client_secret"]
    assert new_secret != client["client_secret"]

    assert_invalid_client(await cc_token(b, client), basic=False)
    basic = await b.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=auth(client))
    assert_invalid_client(basic)
    assert_token(await cc_token(b, {**client, "client_secret": new_secret}))
    assert_token(await cc_token(a, {**client, "client_secret": new_secret}))
    assert_invalid_client(await cc_token(a, client), basic=False)


async def test_secret_rotations_repeatedly_across_instances(pair: Pair) -> None:
    """No luck involved: every rotation is seen by the other instance at once, every time."""
    a, b = pair
    client = await new_client(a)
    for i in range(20):
        writer, reader = (a, b) if i % 2 == 0 else (b, a)
        await warm(reader, client)
        rotated = await writer.post(f"/admin/clients/{client['client_id']}/secret", headers=ADMIN)
        assert rotated.status_code == 200, rotated.text
        assert_invalid_client(await cc_token(reader, client), basic=False)
        client = {**client, "client_secret": rotated.json()["client_secret"]}


async def test_client_deleted_on_a_is_refused_by_b_and_its_tokens_die(pair: Pair) -> None:
    a, b = pair
    client = await new_client(a)
    rs = await new_client(a, name="resource server", introspection="all")
    await new_user(a)
    await warm(b, client)
    own = assert_token(await cc_token(b, client))["access_token"]
    user = assert_token(await password_token(a, client))
    assert (await introspect(b, rs, own))["active"] is True
    assert (await introspect(b, rs, user["refresh_token"]))["active"] is True
    login = await b.post("/login", headers={"Authorization": f"Bearer {own}"})
    assert login.status_code == 200, login.text

    deleted = await a.delete(f"/admin/clients/{client['client_id']}", headers=ADMIN)
    assert deleted.status_code == 204, deleted.text

    assert_invalid_client(await cc_token(b, client), basic=False)
    for token in (own, user["access_token"], user["refresh_token"]):
        assert await introspect(b, rs, token) == {"active": False}
    login = await b.post("/login", headers={"Authorization": f"Bearer {user['access_token']}"})
    assert login.status_code == 401 and login.headers["www-authenticate"] == BAD_BEARER
    gone = await b.get(f"/admin/clients/{client['client_id']}", headers=ADMIN)
    assert gone.status_code == 404


async def test_client_edited_on_a_is_seen_by_b(pair: Pair) -> None:
    """Configuration (here: scopes and access token lifetime) changes at once everywhere."""
    a, b = pair
    client = await new_client(a)
    await warm(b, client)
    patched = await a.patch(f"/admin/clients/{client['client_id']}", headers=ADMIN,
                            json={"scopes": ["read"], "access_token_ttl": 60})
    assert patched.status_code == 200, patched.text
    body = assert_token(await cc_token(b, client))
    assert body["scope"] == "read" and body["expires_in"] == 60
    refused = await cc_token(b, client, scope="write")
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_scope"


async def test_token_issued_on_a_revoked_on_b_is_inactive_on_a(pair: Pair) -> None:
    a, b = pair
    client = await new_client(a)
    rs = await new_client(b, name="resource server", introspection="all")
    await new_user(a)
    tokens = assert_token(await password_token(a, client))
    info = await introspect(b, rs, tokens["access_token"])
    assert info["active"] is True and info["client_id"] == client["client_id"]
    assert info["username"] == "alice"

    revoked = await b.post("/oauth/revoke", data={"token": tokens["refresh_token"]}, auth=auth(client))
    assert revoked.status_code == 200 and revoked.content == b""

    for token in (tokens["access_token"], tokens["refresh_token"]):
        assert await introspect(a, rs, token) == {"active": False}
        assert await introspect(b, rs, token) == {"active": False}
    login = await a.post("/login", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert login.status_code == 401 and login.headers["www-authenticate"] == BAD_BEARER


@pytest.mark.parametrize("per_worker", [False, True], ids=["verifiers", "argon2_per_worker"])
async def test_cache_is_not_trusted_while_the_subscription_is_down(
        redis_server: RedisServer, redis_db: redis.Redis, per_worker: bool) -> None:
    """B's subscription cannot come up (ACL: its user may not use channels): B must read the
    client from Redis each time, so a rotation it was never told about still takes effect at
    once. With verifiers the fresh record carries its verifier (no argon2); per worker, every
    request runs argon2."""
    redis_db.acl_setuser("tsv-writer", enabled=True, passwords=["+writer-password-0123"],
                         keys=["*"], channels=["*"], commands=["+@all"], reset=True)
    redis_db.acl_setuser("tsv-deaf", enabled=True, passwords=["+deaf-password-0123"],
                         keys=["*"], commands=["+@all"], reset=True, reset_channels=True)
    try:
        writer_url = f"redis://tsv-writer:writer-password-0123@127.0.0.1:{redis_server.port}/0"
        deaf_url = f"redis://tsv-deaf:deaf-password-0123@127.0.0.1:{redis_server.port}/0"
        async with (instance(writer_url) as a,
                    instance(deaf_url, argon2_per_worker=per_worker) as b):
            await wait_for(lambda: directory(a).live, "A's subscription")
            # Only A is subscribed; B keeps trying and failing.
            assert redis_db.pubsub_numsub("tsv:invalidate") == [(b"tsv:invalidate", 1)]
            assert not directory(b).live
            assert (await b.get("/readyz")).json() == {"status": "ok", "redis": True,
                                                       "invalidation": False}
            client = await new_client(a)
            d = directory(b)
            for _ in range(2):
                runs = d.argon2_runs
                assert_token(await cc_token(b, client))
                assert d.argon2_runs == runs + per_worker  # nothing was cached
            rotated = await a.post(f"/admin/clients/{client['client_id']}/secret", headers=ADMIN)
            assert rotated.status_code == 200, rotated.text
            assert_invalid_client(await cc_token(b, client), basic=False)
            assert_token(await cc_token(b, {**client, "client_secret": rotated.json()["client_secret"]}))
            deleted = await a.delete(f"/admin/clients/{client['client_id']}", headers=ADMIN)
            assert deleted.status_code == 204
            assert_invalid_client(await cc_token(b, {**client,
                                                     "client_secret": rotated.json()["client_secret"]}),
                                  basic=False)
    finally:
        redis_db.acl_deluser("tsv-writer", "tsv-deaf")


async def test_live_flag_follows_the_subscription(
        pair: Pair, redis_server: RedisServer) -> None:
    a, b = pair
    try:
        redis_server.stop()
        await wait_for(lambda: not directory(a).live and not directory(b).live, "live=False")
        down = await b.get("/readyz")
        assert down.status_code == 503
    finally:
        redis_server.start()
    await wait_for(lambda: directory(a).live and directory(b).live, "live=True")
    ready = await b.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "redis": True, "invalidation": True}
    # And the cache works again, with invalidation: the restarted Redis is empty, start over.
    client = await new_client(a)
    await warm(b, client)
    rotated = await a.post(f"/admin/clients/{client['client_id']}/secret", headers=ADMIN)
    assert rotated.status_code == 200, rotated.text
    assert_invalid_client(await cc_token(b, client), basic=False)
