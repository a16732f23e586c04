"""The single-node fixtures `redis_db`, `app_factory` and `http`, on the Redis Cluster instead.

A test module that imports existing test functions and these three fixtures runs those tests a
second time against the real local cluster of `tests.cluster_fixtures` (3 masters, 3 replicas):
every fixture the tests ask for resolves to these overrides, and the cluster is emptied on every
primary before each test, so the one cluster of the session keeps the tests independent.

Those modules share one cluster (it takes seconds to form): a session fixture imported into
several modules is set up once per module, so `suite_cluster` keeps the first one it starts.
tests/test_cluster.py keeps its own cluster, since its failover test changes the topology.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.cluster import RedisCluster

from tests.cluster_fixtures import RedisClusterNodes
from tests.conftest import AppFactory, make_settings, running_app

__all__ = ["app_factory", "http", "redis_db", "suite_cluster"]

_started: list[RedisClusterNodes] = []


@pytest.fixture(scope="session")
def suite_cluster(pytestconfig: pytest.Config) -> RedisClusterNodes:
    """The session's one cluster for the re-run suites, stopped when the session ends."""
    if not _started:
        workdir = Path(tempfile.mkdtemp(prefix="tokensvc-cluster-suite-"))
        pytestconfig.add_cleanup(lambda: shutil.rmtree(workdir, ignore_errors=True))
        cluster = RedisClusterNodes(workdir)
        pytestconfig.add_cleanup(cluster.stop)
        cluster.start()
        _started.append(cluster)
    return _started[0]


@pytest.fixture
def redis_db(suite_cluster: RedisClusterNodes) -> Iterator[RedisCluster]:
    """A cluster client on the cluster, emptied on every primary before each test."""
    r = RedisCluster.from_url(suite_cluster.url)
    r.flushall(target_nodes=RedisCluster.PRIMARIES)
    yield r
    r.close()


@pytest.fixture
def app_factory(redis_db: RedisCluster, suite_cluster: RedisClusterNodes) -> AppFactory:
    """Like conftest's `app_factory`, on the cluster (`redis_cluster=True`, one node's URL)."""

    def factory(**overrides: Any) -> contextlib.AbstractAsyncContextManager[httpx.AsyncClient]:
        return running_app(make_settings(suite_cluster.url, redis_cluster=True, **overrides))

    return factory


@pytest.fixture
async def http(app_factory: AppFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with app_factory() as client:
        yield client
