"""Redis with deploy/redis.conf (AOF, appendfsync everysec) killed mid-service: nothing is lost.

A real `tokensvc serve` issues and revokes tokens; Redis is then killed with SIGKILL (a crash:
no shutdown save, no final fsync) and started again on the same port and data directory. The
service finds Redis again by itself, and every token issued more than a second before the crash
is still active, every revoked one still revoked.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.config import ADMIN
from tests.support.redis_servers import RedisServer
from tests.support.service import serving


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """redis-server with the deployment's configuration; only port, bind and dir changed."""
    server = RedisServer(tmp_path / "redis", mode="aof")
    server.start()
    yield server
    if server.proc is not None:
        server.proc.kill()
        server.proc.wait(10)


def introspect(http: httpx.Client, client: dict[str, Any], token: str) -> bool:
    resp = http.post("/oauth/introspect", data={"token": token},
                     auth=(client["client_id"], client["client_secret"]))
    assert resp.status_code == 200, resp.text
    return bool(resp.json()["active"])


def test_tokens_and_revocations_survive_a_redis_crash(aof_redis: RedisServer, tmp_path: Path) -> None:
    with aof_redis.sync() as r:  # the deployment's settings are in force
        assert r.config_get("appendonly") == {"appendonly": "yes"}
        assert r.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert r.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}

    with serving(aof_redis.url, tmp_path / "svc") as (svc,), httpx.Client(base_url=svc.url,
                                                                          timeout=10) as http:
        made = http.post("/admin/clients", headers=ADMIN, json={"name": "durable",
                                                                 "scopes": ["read", "write"]})
        assert made.status_code == 201, made.text
        client = made.json()
        creds = (client["client_id"], client["client_secret"])
        user = http.post("/admin/users", headers=ADMIN,
                         json={"username": "alice", "password": "correct horse", "verified": True})
        assert user.status_code == 201, user.text

        live: list[str] = []
        dead: list[str] = []
        for i in range(30):
            resp = http.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=creds)
            assert resp.status_code == 200, resp.text
            (dead if i % 3 == 0 else live).append(resp.json()["access_token"])
        grants = []
        for _ in range(12):
            resp = http.post("/oauth/token", auth=creds, data={
                "grant_type": "password", "username": "alice", "password": "correct horse"})
            assert resp.status_code == 200, resp.text
            grants.append(resp.json())
        # A rotated refresh token: the new pair lives, the old refresh token is spent.
        old = grants.pop()
        resp = http.post("/oauth/token", auth=creds, data={
            "grant_type": "refresh_token", "refresh_token": old["refresh_token"]})
        assert resp.status_code == 200, resp.text
        grants.append(resp.json())
        dead.append(old["refresh_token"])
        for token in dead[:10]:  # each client-credentials token revoked on its own
            assert http.post("/oauth/revoke", data={"token": token}, auth=creds).status_code == 200
        for i, grant in enumerate(grants):
            if i % 3 == 0:  # the whole grant, by its refresh token
                assert http.post("/oauth/revoke", data={"token": grant["refresh_token"]},
                                 auth=creds).status_code == 200
                dead += [grant["access_token"], grant["refresh_token"]]
            elif i % 3 == 1:  # the access token alone
                assert http.post("/oauth/revoke", auth=creds, data={
                    "token": grant["access_token"], "token_type_hint": "access_token"}).status_code == 200
                dead.append(grant["access_token"])
                live.append(grant["refresh_token"])
            else:
                live += [grant["access_token"], grant["refresh_token"]]
        assert all(introspect(http, client, t) for t in live)
        assert not any(introspect(http, client, t) for t in dead)

        time.sleep(1.5)  # a real timer (Redis's appendfsync everysec): everything above is on disk now
        aof_redis.crash()
        down = http.post("/oauth/introspect", data={"token": live[0]}, auth=creds)
        assert down.status_code == 503, down.text
        assert down.headers["retry-after"] == "1"
        assert httpx.get(f"{svc.url}/readyz").status_code == 503
        aof_redis.start()

        # No restart of the service: it reconnects by itself.
        deadline = time.monotonic() + 15
        while httpx.get(f"{svc.url}/readyz").status_code != 200:
            assert time.monotonic() < deadline, "tokensvc did not recover"
            time.sleep(0.1)
        assert http.post("/oauth/token", data={"grant_type": "client_credentials"},
                         auth=creds).status_code == 200
        # Every token from before the crash: active if it was, revoked if it was.
        assert [t for t in live if not introspect(http, client, t)] == []
        assert [t for t in dead if introspect(http, client, t)] == []
        # The spent refresh token stays spent; a live one still rotates.
        replay = http.post("/oauth/token", auth=creds, data={
            "grant_type": "refresh_token", "refresh_token": old["refresh_token"]})
        assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
        rotate = http.post("/oauth/token", auth=creds, data={
            "grant_type": "refresh_token", "refresh_token": grants[2]["refresh_token"]})
        assert rotate.status_code == 200, rotate.text

    with aof_redis.sync() as r:  # the data came back from the append-only file
        assert r.info("persistence")["aof_enabled"] == 1
    assert any((aof_redis.workdir / "appendonlydir").iterdir())
