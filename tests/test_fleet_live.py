"""The fleet with real `tokensvc serve` processes on one Redis: argon2 once per secret per
deployment, secrets changed on one instance refused on the others at once, server keys that
must agree, and a key rotation by rolling restart that keeps every live token valid."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from tests.support.config import ADMIN, SECRET_KEY
from tests.support.metrics import settled_metric
from tests.support.redis_servers import RedisServer
from tests.support.service import Service
from tokensvc.fleet import SIGNING, WORKERS
from tokensvc.keyring import fingerprint
from tokensvc.store import keys

pytestmark = pytest.mark.slow

NEW_KEY = "a-new-server-key-0123456789abcdef0123456789"
ARGON2 = "tokensvc_argon2_verifications_total"
Client = dict[str, Any]


class Fleet:
    """Services started by a test, all stopped at its end."""

    def __init__(self, redis_url: str, root: Path) -> None:
        self.redis_url = redis_url
        self.root = root
        self.running: list[Service] = []

    def start(self, name: str, **settings: Any) -> Service:
        settings.setdefault("fleet_heartbeat", "0.2")
        svc = Service.deployed(self.redis_url, self.root / name, **settings)
        svc.start()
        svc.wait_ready()
        self.running.append(svc)
        return svc

    def stop(self, svc: Service) -> None:
        svc.stop()
        self.running.remove(svc)


@pytest.fixture
def fleet(redis_db: redis.Redis, redis_server: RedisServer, tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(redis_server.url, tmp_path)
    try:
        yield f
    finally:
        for svc in list(f.running):
            svc.stop()


def token(svc: Service, client: Client, secret: str | None = None) -> httpx.Response:
    # A new connection each time, so the requests spread over a service's workers.
    return httpx.post(f"{svc.url}/oauth/token", data={"grant_type": "client_credentials"},
                      auth=(client["client_id"], secret or client["client_secret"]), timeout=10)


def active(svc: Service, client: Client, tok: str) -> bool:
    resp = httpx.post(f"{svc.url}/oauth/introspect", data={"token": tok},
                      auth=(client["client_id"], client["client_secret"]), timeout=10)
    assert resp.status_code == 200, resp.text
    return bool(resp.json()["active"])


def create_client(svc: Service) -> Client:
    resp = httpx.post(f"{svc.url}/admin/clients", headers=ADMIN, timeout=10,
                      json={"name": "fleet", "scopes": ["read"],
                            "grant_types": ["client_credentials", "password", "refresh_token"]})
    assert resp.status_code == 201, resp.text
    doc: Client = resp.json()
    return doc


def test_a_secret_verified_once_is_never_run_through_argon2_again(
        fleet: Fleet, redis_db: redis.Redis) -> None:
    one = fleet.start("one", metrics_port=True)
    client = create_client(one)
    # A record from before verifiers: the first check in the deployment runs argon2 and writes one.
    raw = redis_db.get(keys.client(client["client_id"]))
    assert isinstance(raw, bytes)
    doc = orjson.loads(raw)
    doc.pop("secret_verifier")
    redis_db.set(keys.client(client["client_id"]), orjson.dumps(doc))
    for _ in range(5):
        assert token(one, client).status_code == 200
    assert settled_metric(one.metrics_url, ARGON2, 1, kind="client_secret") == 1

    # Another instance with two workers, started afterwards, and a freshly started worker: no argon2.
    two = fleet.start("two", workers=2, metrics_port=True)
    for _ in range(20):
        assert token(two, client).status_code == 200
    assert settled_metric(two.metrics_url, "tokensvc_secret_cache_hits_total", 20) == 20
    assert settled_metric(two.metrics_url, ARGON2, 0, kind="client_secret") == 0
    fresh = fleet.start("fresh", metrics_port=True)
    assert token(fresh, client).status_code == 200
    assert settled_metric(fresh.metrics_url, ARGON2, 0, kind="client_secret") == 0

    # A wrong secret still costs an argon2 run, and counts toward the client's throttle.
    assert token(fresh, client, "tsv_cs_wrong").status_code == 401
    assert settled_metric(fresh.metrics_url, ARGON2, 1, kind="client_secret") == 1
    assert int(redis_db.get(keys.client_auth_failures(client["client_id"])) or 0) == 1

    # Rotated on one: the old secret is refused on the others on the very next request.
    rotated = httpx.post(f"{one.url}/admin/clients/{client['client_id']}/secret", headers=ADMIN,
                         timeout=10)
    assert rotated.status_code == 200
    new_secret = rotated.json()["client_secret"]
    for svc in (two, fresh, two):
        assert token(svc, client).status_code == 401
        assert token(svc, client, new_secret).status_code == 200
    # Revoked on one: refused everywhere on the next request.
    assert httpx.delete(f"{one.url}/admin/clients/{client['client_id']}", headers=ADMIN,
                        timeout=10).status_code == 204
    for svc in (two, fresh, two):
        assert token(svc, client, new_secret).status_code == 401


def test_an_instance_with_other_keys_refuses_to_start(fleet: Fleet, tmp_path: Path) -> None:
    fleet.start("first")
    other = Service.deployed(fleet.redis_url, tmp_path / "other", secret_keys="x" * 40)
    other.start()
    assert other.proc is not None
    try:
        code = other.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        other.stop()
        raise AssertionError("the instance with foreign keys started") from None
    assert code == 1
    log = other.log.read_text()
    assert "TOKENSVC_SECRET_KEYS" in log and fingerprint(SECRET_KEY) in log
    assert "x" * 40 not in log  # the key itself is never printed


def signing_fingerprints(redis_db: redis.Redis) -> set[str]:
    return {str(value, "utf-8").split(" ")[1] for value in redis_db.hvals(WORKERS)}  # type: ignore[arg-type]


def wait_signing(redis_db: redis.Redis, key: str, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while signing_fingerprints(redis_db) != {fingerprint(key)}:
        assert time.monotonic() < deadline, signing_fingerprints(redis_db)
        time.sleep(0.05)


def test_a_key_rotation_by_rolling_restart_keeps_every_live_token(
        fleet: Fleet, redis_db: redis.Redis) -> None:
    both = f"{NEW_KEY},{SECRET_KEY}"
    a, b = fleet.start("a"), fleet.start("b")
    client = create_client(a)
    assert httpx.post(f"{a.url}/admin/users", headers=ADMIN, timeout=10,
                      json={"username": "alice", "password": "correct horse"}).status_code == 201
    minted = [token(a, client).json()["access_token"], token(b, client).json()["access_token"]]
    creds = (client["client_id"], client["client_secret"])
    grant = httpx.post(f"{a.url}/oauth/token", timeout=10, auth=creds,
                       data={"grant_type": "password", "username": "alice", "password": "correct horse"})
    assert grant.status_code == 200
    refresh = grant.json()["refresh_token"]
    minted.append(grant.json()["access_token"])

    # Step 1: the new key goes first, one instance at a time.
    fleet.stop(a)
    a = fleet.start("a2", secret_keys=both)
    # b still has only the old key, so a keeps signing with the old one: b accepts it.
    wait_signing(redis_db, SECRET_KEY)
    minted.append(token(a, client).json()["access_token"])
    for svc in (a, b):
        assert all(active(svc, client, t) for t in minted)
    fleet.stop(b)
    b = fleet.start("b2", secret_keys=both)
    # Every instance accepts the new key now: they all switch to it within a beat.
    wait_signing(redis_db, NEW_KEY)
    assert redis_db.get(SIGNING) == fingerprint(NEW_KEY).encode()
    minted += [token(a, client).json()["access_token"], token(b, client).json()["access_token"]]
    for svc in (a, b):
        assert all(active(svc, client, t) for t in minted)
    # A refresh token issued under the old key rotates on the new fleet.
    rotated = httpx.post(f"{b.url}/oauth/token", timeout=10, auth=creds,
                         data={"grant_type": "refresh_token", "refresh_token": refresh})
    assert rotated.status_code == 200, rotated.text
    assert active(a, client, rotated.json()["access_token"])

    # An instance started with the old key alone would refuse the new tokens: it may not start.
    stale = Service.deployed(fleet.redis_url, fleet.root / "stale", fleet_heartbeat="0.2")
    stale.start()
    assert stale.proc is not None and stale.proc.wait(timeout=30) == 1
