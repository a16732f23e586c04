"""Fixtures: a real redis-server on a free loopback port, and apps built against it."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tokensvc.app import create_app
from tokensvc.settings import Settings

ADMIN_KEY = "test-admin-key-0123456789"
SECRET_KEY = "test-server-key-0123456789abcdef0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A private redis-server process that tests may stop and start again on the same port."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (make test installs it)")
        self.binary = binary
        self.port = free_port()
        self.workdir = workdir
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with redis.Redis(port=self.port, socket_timeout=0.2) as probe:
                    if probe.ping():
                        return
            except redis.ConnectionError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def sync(self) -> redis.Redis:
        return redis.Redis(port=self.port)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="tokensvc-redis-") as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        yield server
        server.stop()


@pytest.fixture
def redis_db(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """The shared server, emptied before each test."""
    if redis_server.proc is None:
        redis_server.start()
    r = redis_server.sync()
    r.flushall()
    yield r
    r.close()


def make_settings(redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "admin_key": ADMIN_KEY,
        "secret_keys": (SECRET_KEY,),
        # Cheap argon2 for tests; production defaults are OWASP's minimum.
        "password_time_cost": 1,
        "password_memory_cost": 1024,
        "redis_timeout": 0.5,
        "issuer": "http://testserver",
    }
    values.update(overrides)
    return Settings(**values)


AppFactory = Callable[..., contextlib.AbstractAsyncContextManager[httpx.AsyncClient]]


@contextlib.asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app started (lifespan) with its invalidation subscription up, and an HTTP client
    that drives it in-process; the app is at `client.app`."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        svc = app.state.services
        for _ in range(300):  # the invalidation subscription is up: the cache is in play
            if svc.clients.live:
                break
            await asyncio.sleep(0.01)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            http.app = app  # type: ignore[attr-defined]
            yield http


@pytest.fixture
def app_factory(redis_db: redis.Redis, redis_server: RedisServer) -> AppFactory:
    """Build an app (with settings overrides) and an HTTP client that drives it in-process."""

    def factory(**overrides: Any) -> contextlib.AbstractAsyncContextManager[httpx.AsyncClient]:
        return running_app(make_settings(redis_server.url, **overrides))

    return factory


@pytest.fixture
async def http(app_factory: AppFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with app_factory() as client:
        yield client


ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def data_keys(r: redis.Redis) -> list[bytes]:
    """Every key but the fleet registry's, which each running worker renews on its own
    (tokensvc/fleet.py): what a request stored, or did not."""
    return [k for k in r.scan_iter() if not k.startswith(b"tsv:{fleet}:")]


async def new_client(http: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    """Create a client through the admin API; returns its JSON (secret included)."""
    body = {"name": "test client", "scopes": ["read", "write"], **fields}
    resp = await http.post("/admin/clients", json=body, headers=ADMIN)
    assert resp.status_code == 201, resp.text
    doc: dict[str, Any] = resp.json()
    return doc


async def new_user(http: httpx.AsyncClient, username: str = "alice",
                   password: str = "correct horse", verified: bool = True) -> None:
    resp = await http.post("/admin/users", headers=ADMIN,
                           json={"username": username, "password": password, "verified": verified})
    assert resp.status_code == 201, resp.text


async def cc_token(http: httpx.AsyncClient, client: dict[str, Any], **extra: str) -> httpx.Response:
    return await http.post("/oauth/token", data={
        "grant_type": "client_credentials", "client_id": client["client_id"],
        "client_secret": client["client_secret"], **extra})


async def password_token(http: httpx.AsyncClient, client: dict[str, Any], username: str = "alice",
                         password: str = "correct horse", **extra: str) -> httpx.Response:
    return await http.post("/oauth/token", data={
        "grant_type": "password", "client_id": client["client_id"],
        "client_secret": client["client_secret"], "username": username, "password": password,
        **extra})


async def introspect(http: httpx.AsyncClient, client: dict[str, Any], token: str) -> dict[str, Any]:
    resp = await http.post("/oauth/introspect", data={"token": token},
                           auth=(client["client_id"], client["client_secret"]))
    assert resp.status_code == 200, resp.text
    doc: dict[str, Any] = resp.json()
    return doc
