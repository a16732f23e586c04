"""Three real `tokensvc serve` processes on one Redis: what one does holds on the others at once.

tests/test_instances.py checks the same in-process; here each instance is its own OS process
with its own client cache and invalidation subscription, as in production.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.support.api import active, auth, new_client, new_user
from tests.support.config import ADMIN
from tests.support.metrics import metric
from tests.support.redis_servers import RedisServer
from tests.support.service import Service, serving

Client = dict[str, Any]


@pytest.fixture
def services(redis_db: redis.Redis, redis_server: RedisServer, tmp_path: Path) -> Iterator[list[Service]]:
    with serving(redis_server.url, tmp_path, 3) as running:
        yield running


@pytest.fixture
async def https(services: list[Service]) -> AsyncIterator[list[httpx.AsyncClient]]:
    clients = [httpx.AsyncClient(base_url=svc.url, timeout=10) for svc in services]
    try:
        yield clients
    finally:
        for http in clients:
            await http.aclose()


async def wait_for_metric(svc: Service, name: str, at_least: float) -> None:
    """Counts reach the scrape within the 1 s flush."""
    for _ in range(50):
        if metric(svc.metrics_url, name) >= at_least:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name} stayed below {at_least} on {svc.url}")


async def cc(http: httpx.AsyncClient, client: Client, secret: str | None = None) -> httpx.Response:
    return await http.post("/oauth/token", data={"grant_type": "client_credentials"},
                           auth=auth(client, secret))


async def test_issued_on_one_introspected_on_another_revoked_on_the_third(
        https: list[httpx.AsyncClient]) -> None:
    one, two, three = https
    client = await new_client(one)
    checker = await new_client(two, introspection="all")
    await new_user(one)
    issued = await one.post("/oauth/token", auth=auth(client), data={
        "grant_type": "password", "username": "alice", "password": "correct horse"})
    assert issued.status_code == 200, issued.text
    access, refresh = issued.json()["access_token"], issued.json()["refresh_token"]
    other = (await cc(one, client)).json()["access_token"]

    assert await active(two, checker, access) and await active(two, checker, refresh)
    assert await active(three, client, other)
    revoked = await three.post("/oauth/revoke", auth=auth(client),
                               data={"token": access, "token_type_hint": "access_token"})
    assert revoked.status_code == 200 and revoked.content == b""
    # Right after the revocation answer, all three instances at once.
    views = await asyncio.gather(*(active(http, c, access) for http in https for c in (client, checker)))
    assert views == [False] * 6
    # Only that token (the hint): its refresh token and the client's other token are still good.
    views = await asyncio.gather(*(active(http, checker, t) for http in https for t in (refresh, other)))
    assert views == [True] * 6

    # Revoking without a hint (on the third) ends the whole grant everywhere.
    fresh = await two.post("/oauth/token", auth=auth(client), data={
        "grant_type": "refresh_token", "refresh_token": refresh})
    assert fresh.status_code == 200, fresh.text
    rotated = fresh.json()
    assert await active(one, checker, rotated["access_token"])
    revoked = await three.post("/oauth/revoke", data={"token": rotated["refresh_token"]}, auth=auth(client))
    assert revoked.status_code == 200
    views = await asyncio.gather(*(active(http, checker, token) for http in https
                                   for token in (rotated["access_token"], rotated["refresh_token"])))
    assert views == [False] * 6
    assert await asyncio.gather(*(active(http, checker, other) for http in https)) == [True] * 3


def assert_invalid_client(resp: httpx.Response) -> None:
    assert resp.status_code == 401, resp.text
    assert resp.json()["error"] == "invalid_client"


async def test_secret_rotated_on_one_is_refused_by_the_others_on_the_next_request(
        services: list[Service], https: list[httpx.AsyncClient]) -> None:
    one, two, three = https
    client = await new_client(one)
    old = client["client_secret"]
    for _ in range(2):  # warm: every instance has verified the old secret and caches it
        for http in https:
            assert (await cc(http, client)).status_code == 200
    for svc in services:  # the second request on each was answered from its cache
        await wait_for_metric(svc, "tokensvc_secret_cache_hits_total", 1)

    rotated = await one.post(f"/admin/clients/{client['client_id']}/secret", headers=ADMIN)
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["client_secret"]
    assert new != old
    # The very next request on each instance, all at once: the old secret is refused everywhere.
    refused = await asyncio.gather(*(cc(http, client, old) for http in (two, three, one)))
    for resp in refused:
        assert_invalid_client(resp)
    # The new one works everywhere, and introspection with the old one is refused too.
    for http in https:
        resp = await cc(http, client, new)
        assert resp.status_code == 200, resp.text
        token = resp.json()["access_token"]
        stale = await http.post("/oauth/introspect", data={"token": token}, auth=auth(client, old))
        assert_invalid_client(stale)
    for _ in range(2):  # and stays refused (a failed check is not cached as a success)
        for http in https:
            assert_invalid_client(await cc(http, client, old))

    # Rotating again from another instance: the same, with the roles changed.
    again = await three.post(f"/admin/clients/{client['client_id']}/secret", headers=ADMIN)
    assert again.status_code == 200
    newer = again.json()["client_secret"]
    for resp in await asyncio.gather(*(cc(http, client, new) for http in https)):
        assert_invalid_client(resp)
    for resp in await asyncio.gather(*(cc(http, client, newer) for http in https)):
        assert resp.status_code == 200, resp.text


async def test_client_revoked_on_one_is_refused_everywhere(https: list[httpx.AsyncClient]) -> None:
    one, two, three = https
    client = await new_client(one)
    checker = await new_client(one, introspection="all")
    tokens = []
    for http in https:  # warm every cache, with a token from each instance
        resp = await cc(http, client)
        assert resp.status_code == 200, resp.text
        tokens.append(resp.json()["access_token"])
    deleted = await two.delete(f"/admin/clients/{client['client_id']}", headers=ADMIN)
    assert deleted.status_code == 204, deleted.text
    for resp in await asyncio.gather(*(cc(http, client) for http in (one, three, two))):
        assert_invalid_client(resp)
    for http in https:
        stale = await http.post("/oauth/introspect", data={"token": tokens[0]}, auth=auth(client))
        assert_invalid_client(stale)
    # Its tokens are dead too, wherever they were issued and wherever they are checked.
    views = await asyncio.gather(*(active(http, checker, t) for http in https for t in tokens))
    assert views == [False] * 9
    # The other client is untouched.
    for http in https:
        assert (await cc(http, checker)).status_code == 200
