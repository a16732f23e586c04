"""A real local Redis Cluster (3 masters, 3 replicas) and apps built against it."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import AppFactory, free_port, make_settings, running_app

NODE_TIMEOUT_MS = 2000


def _text(value: Any) -> str:
    return (value.decode() if isinstance(value, bytes) else str(value)).strip()


class RedisClusterNodes:
    """Six redis-server processes joined into one cluster by `redis-cli --cluster create`."""

    def __init__(self, workdir: Path) -> None:
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if server is None or cli is None:
            pytest.fail("redis-server and redis-cli are needed (make test installs them)")
        self.server, self.cli, self.workdir = server, cli, workdir
        self.ports: list[int] = []
        while len(self.ports) < 6:
            port = self._node_port()
            if port not in self.ports:
                self.ports.append(port)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @staticmethod
    def _node_port() -> int:
        """A free port whose cluster bus port (port + 10000) is free and valid too."""
        while True:
            port = free_port()
            if port + 10000 > 65535:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start_node(self, port: int) -> None:
        self.procs[port] = subprocess.Popen(
            [self.server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", f"nodes-{port}.conf",
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--appendonly", "yes", "--save", "",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.ConnectionError), \
                    redis.Redis(port=port, socket_timeout=0.5) as probe:
                if probe.ping():
                    return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on {port} did not start")

    def start(self) -> None:
        for port in self.ports:
            self.start_node(port)
        subprocess.run([self.cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                        "--cluster-replicas", "1", "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        self.wait_ok(self.ports, 30)
        self.wait_replicas_online(30)

    def wait_replicas_online(self, seconds: float) -> None:
        """cluster_state:ok comes before the replicas' first sync; WAIT needs it done."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            online = 0
            for port in self.masters():
                with redis.Redis(port=port, socket_timeout=0.5) as r:
                    replica = r.info("replication").get("slave0")
                    online += isinstance(replica, dict) and replica.get("state") == "online"
            if online == 3:
                return
            time.sleep(0.1)
        raise RuntimeError("the replicas did not finish their first sync")

    def live_ports(self) -> list[int]:
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    def wait_ok(self, ports: list[int], seconds: float) -> None:
        """Until every given node says cluster_state:ok and knows 3 masters with slots."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                if all(self._ok(p) for p in ports):
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")

    @staticmethod
    def _ok(port: int) -> bool:
        with redis.Redis(port=port, socket_timeout=0.5) as r:
            info = r.execute_command("CLUSTER INFO")
            if isinstance(info, dict):  # redis-py parses it
                fields = {_text(k): _text(v) for k, v in info.items()}
            else:
                fields = dict(line.partition(":")[::2] for line in _text(info).splitlines())
            return fields.get("cluster_state") == "ok" and fields.get("cluster_size") == "3"

    def masters(self) -> list[int]:
        out = []
        for port in self.live_ports():
            with redis.Redis(port=port, socket_timeout=0.5) as r:
                if r.info("replication")["role"] == "master":
                    out.append(port)
        return out

    def flush(self) -> None:
        for port in self.masters():
            with redis.Redis(port=port, socket_timeout=2) as r:
                r.flushall()

    def master_of(self, key: str) -> int:
        with redis.Redis(port=self.live_ports()[0], socket_timeout=0.5) as r:
            slot = int(r.execute_command("CLUSTER KEYSLOT", key))
            for start, end, master, *_ in r.execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    return int(master[1])
        raise LookupError(key)

    def kill(self, port: int) -> None:
        proc = self.procs[port]
        proc.kill()  # SIGKILL: no goodbye to the cluster
        proc.wait(10)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterNodes]:
    with tempfile.TemporaryDirectory(prefix="tokensvc-cluster-") as tmp:
        cluster = RedisClusterNodes(Path(tmp))
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()


@pytest.fixture
def cluster_db(redis_cluster: RedisClusterNodes) -> Iterator[redis.RedisCluster]:
    """A cluster client on the emptied cluster."""
    redis_cluster.flush()
    r = redis.RedisCluster.from_url(redis_cluster.url)
    yield r
    r.close()


@pytest.fixture
def cluster_app_factory(cluster_db: redis.RedisCluster, redis_cluster: RedisClusterNodes) -> AppFactory:
    """Like `app_factory`, on the cluster (`redis_cluster=True`, the URL of one node)."""

    def factory(**overrides: Any) -> contextlib.AbstractAsyncContextManager[httpx.AsyncClient]:
        return running_app(make_settings(redis_cluster.url, redis_cluster=True, **overrides))

    return factory
