"""redis-server processes of the tests' own, on free loopback ports.

One way to start them, in three modes: `RedisServer()` plain (no persistence: the fastest),
`RedisServer(mode="aof")` with the deployment's deploy/redis.conf (AOF every second,
noeviction: what the durability tests crash), and `RedisClusterNodes`, six nodes joined into a
Redis Cluster of 3 masters and 3 replicas. Each node logs into its work directory, and a node
that exits while starting fails with its log rather than after a timeout.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Literal

import pytest
import redis

DEPLOY_CONF = Path(__file__).resolve().parents[2] / "deploy" / "redis.conf"
NODE_TIMEOUT_MS = 2000
START_SECONDS = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_binary(name: str = "redis-server") -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed (make test installs it)")
    return found


def start_node(binary: str, port: int, workdir: Path, args: list[str]) -> subprocess.Popen[bytes]:
    """redis-server on `port` with `args`, once it answers PING (loading its data included)."""
    log = workdir / f"redis-{port}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([binary, *args, "--port", str(port), "--bind", "127.0.0.1",
                                 "--dir", str(workdir)], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.ConnectionError, redis.BusyLoadingError), \
                redis.Redis(port=port, socket_timeout=0.5) as probe:
            if probe.ping():
                return proc
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server on {port} exited with {proc.returncode}:\n"
                               f"{log.read_text(errors='replace')}")
        time.sleep(0.02)
    proc.kill()
    proc.wait(10)
    raise RuntimeError(f"redis-server on {port} did not start:\n{log.read_text(errors='replace')}")


class RedisServer:
    """A private redis-server that tests may stop (or crash) and start again on the same port
    and data directory."""

    def __init__(self, workdir: Path, *extra: str, mode: Literal["plain", "aof"] = "plain") -> None:
        self.binary = redis_binary()
        self.port = free_port()
        self.workdir = workdir
        self.extra = extra
        self.mode = mode
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.mode == "aof":  # the deployment's file; only port, bind and dir are changed
            args = [str(DEPLOY_CONF), "--daemonize", "no"]
        else:
            args = ["--save", "", "--appendonly", "no"]
        self.proc = start_node(self.binary, self.port, self.workdir, [*args, *self.extra])

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def crash(self) -> None:
        """SIGKILL: no shutdown save, no last fsync."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def sync(self, **options: Any) -> redis.Redis:
        return redis.Redis(port=self.port, **options)


def _text(value: Any) -> str:
    return (value.decode() if isinstance(value, bytes) else str(value)).strip()


class RedisClusterNodes:
    """Six redis-server processes joined into one cluster by `redis-cli --cluster create`."""

    def __init__(self, workdir: Path) -> None:
        self.server, self.cli, self.workdir = redis_binary(), redis_binary("redis-cli"), workdir
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
        self.procs[port] = start_node(self.server, port, self.workdir, [
            "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--appendonly", "yes", "--save", ""])

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

    def client(self) -> redis.RedisCluster:
        """A cluster client on the cluster, emptied on every primary."""
        r = redis.RedisCluster.from_url(self.url)
        r.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
        return r

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
