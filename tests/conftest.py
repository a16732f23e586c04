"""Fixtures: a real redis-server on a free loopback port (and, for the modules that ask, the Redis
Cluster), and apps built against it. The helpers live in tests/support; the names re-exported
here keep `from tests.conftest import ...` working."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.support.api import cc_token, introspect, new_client, new_user, password_token
from tests.support.apps import AppFactory, app_factory_for, running_app
from tests.support.config import ADMIN, ADMIN_KEY, SECRET_KEY, make_settings
from tests.support.redis_servers import RedisClusterNodes, RedisServer, free_port
from tests.support.stored import data_keys
from tests.support.tools import prometheus_tools as find_prometheus_tools

__all__ = [
    "ADMIN", "ADMIN_KEY", "SECRET_KEY", "AppFactory", "RedisServer", "cc_token", "data_keys",
    "free_port", "introspect", "make_settings", "new_client", "new_user", "password_token",
    "running_app",
]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="tokensvc-redis-") as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        yield server
        server.stop()


@pytest.fixture(scope="session")
def suite_cluster() -> Iterator[RedisClusterNodes]:
    """The session's Redis Cluster (3 masters, 3 replicas) for the modules that run on it too;
    forming it takes seconds, so it is started once, when a test first asks for it.
    tests/test_cluster.py keeps its own, since its failover test changes the topology."""
    workdir = Path(tempfile.mkdtemp(prefix="tokensvc-cluster-"))
    cluster = RedisClusterNodes(workdir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def prometheus_tools() -> tuple[str, str]:
    """prometheus and promtool; a test that needs them is skipped without them (failed in CI)."""
    return find_prometheus_tools()


@pytest.fixture
def redis_backend(request: pytest.FixtureRequest) -> str:
    """Which Redis the app fixtures use: "single" (the session's redis-server), or "cluster"
    where a module's tests are parametrised with tests.support.apps.ON_SINGLE_AND_CLUSTER."""
    backend: str = getattr(request, "param", "single")
    return backend


@pytest.fixture
def redis_db(request: pytest.FixtureRequest, redis_backend: str) -> Iterator[redis.Redis]:
    """A client of the backend's Redis, emptied before each test (every primary of the cluster)."""
    if redis_backend == "cluster":
        cluster: RedisClusterNodes = request.getfixturevalue("suite_cluster")
        r: redis.Redis = cluster.client()  # type: ignore[assignment]  # the same commands
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        if server.proc is None:  # a test stopped it
            server.start()
        r = server.sync()
        r.flushall()
    yield r
    r.close()


@pytest.fixture
def app_factory(request: pytest.FixtureRequest, redis_db: redis.Redis, redis_backend: str) -> AppFactory:
    """Build an app (with settings overrides) on the backend's Redis, and an HTTP client that
    drives it in-process."""
    if redis_backend == "cluster":
        cluster: RedisClusterNodes = request.getfixturevalue("suite_cluster")
        return app_factory_for(cluster.url, redis_cluster=True)
    server: RedisServer = request.getfixturevalue("redis_server")
    return app_factory_for(server.url)


@pytest.fixture
async def http(app_factory: AppFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with app_factory() as client:
        yield client


@pytest.fixture
async def client(http: httpx.AsyncClient) -> dict[str, Any]:
    """alice, and a confidential client (read and write) for her."""
    await new_user(http)
    return await new_client(http)


@pytest.fixture
async def parties(http: httpx.AsyncClient) -> tuple[dict[str, Any], dict[str, Any]]:
    """alice; the client that owns her grants, and a resource server that introspects them."""
    await new_user(http)
    return await new_client(http), await new_client(http, name="resource server", introspection="all")
