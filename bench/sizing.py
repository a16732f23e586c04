"""The figures of deploy/SIZING.md: Redis memory per live item, Redis commands and CPU per
request, and a worker's memory by number of clients.

    python -m bench.sizing [--items 20000] [--clients 1000,20000,100000] [-o FILE.json]

It starts its own redis-server (no persistence, free port) and `tokensvc serve` (one worker,
cheap argon2 for the set-up: the figures here are memory and Redis work, not argon2), makes
the data through the public API, and measures with Redis' own counters: `INFO memory`
(used_memory before and after N items, divided by N), `MEMORY USAGE` of one key of each kind,
`INFO commandstats` (calls per request) and `INFO cpu` (Redis CPU per request), and the
worker's resident memory from /proc after every client has been used once.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.http import Reply, build_request, form_post
from bench.loadgen import fetch_all

ADMIN_KEY = "sizing-admin-key-0123456789abcdef"
SECRET_KEY = "sizing-server-key-0123456789abcdef0123456789"
IN_FLIGHT = 32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Stack:
    """A private redis-server and one `tokensvc serve` worker."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.redis_port = _free_port()
        self.port = _free_port()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.redis = redis.Redis(port=self.redis_port)
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            sys.exit("redis-server is not on PATH")
        self.procs.append(subprocess.Popen(
            [binary, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)], stdout=subprocess.DEVNULL))
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSVC_")}
        env.update({"TOKENSVC_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
                    "TOKENSVC_ADMIN_KEY": ADMIN_KEY, "TOKENSVC_SECRET_KEYS": SECRET_KEY,
                    "TOKENSVC_PASSWORD_TIME_COST": "1", "TOKENSVC_PASSWORD_MEMORY_COST": "1024",
                    "TOKENSVC_DATA_DIR": str(self.workdir), "TOKENSVC_LOG_LEVEL": "warning",
                    "TOKENSVC_CLIENT_AUTH_FAILURE_LIMIT": "1000000"})
        log = open(self.workdir / "serve.log", "ab")  # kept open as long as the process
        self.procs.append(subprocess.Popen(
            [sys.executable, "-m", "tokensvc", "serve", "--port", str(self.port)], env=env,
            stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        sys.exit(f"tokensvc did not start:\n{(self.workdir / 'serve.log').read_text()[-2000:]}")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()

    def worker_rss_mib(self) -> float:
        """Resident memory of the serving process (one worker: uvicorn serves in-process)."""
        status = Path(f"/proc/{self.procs[1].pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def used_memory(self) -> int:
        info: dict[str, Any] = self.redis.info("memory")
        return int(info["used_memory"])

    def commandstats(self) -> dict[str, int]:
        info: dict[str, Any] = self.redis.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in info.items()}

    def cpu(self) -> float:
        info: dict[str, Any] = self.redis.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _ok(replies: list[Reply], status: int = 200) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for reply in replies:
        if reply.status != status:
            raise RuntimeError(f"HTTP {reply.status}: {reply.body[:300]!r}")
        docs.append(json.loads(reply.body) if reply.body else {})
    return docs


class Sizing:
    """Builds requests as bytes and sends them with the bench's raw HTTP generator: the client
    side must cost far less than the service, or 100,000 clients take a quarter of an hour."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.host = f"127.0.0.1:{stack.port}"

    async def send(self, requests: list[bytes], status: int = 200) -> list[dict[str, Any]]:
        return _ok(await fetch_all("127.0.0.1", self.stack.port, requests, connections=IN_FLIGHT),
                   status)

    def admin(self, path: str, doc: dict[str, Any]) -> bytes:
        return build_request("POST", path, self.host, body=json.dumps(doc).encode(), headers={
            "Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"})

    def form(self, path: str, fields: dict[str, str]) -> bytes:
        return form_post(path, self.host, fields)

    async def clients(self, n: int, **fields: Any) -> list[dict[str, Any]]:
        body = {"name": "sizing", "scopes": ["read", "write"],
                "grant_types": ["client_credentials", "password", "refresh_token"], **fields}
        return await self.send([self.admin("/admin/clients", body)] * n, 201)

    def cc(self, client: dict[str, Any], **extra: str) -> bytes:
        return self.form("/oauth/token", {"grant_type": "client_credentials",
                                          "client_id": client["client_id"],
                                          "client_secret": client["client_secret"], **extra})

    async def per_item(self, label: str, n: int, send: Callable[[], Awaitable[Any]],
                       keys: str | None = None) -> dict[str, Any]:
        """used_memory growth per item over n items, and MEMORY USAGE of one of its keys."""
        before = self.stack.used_memory()
        await send()
        after = self.stack.used_memory()
        out: dict[str, Any] = {"what": label, "items": n, "bytes_per_item": round((after - before) / n, 1)}
        if keys is not None:
            sample = next(iter(self.stack.redis.scan_iter(match=keys, count=1000)), None)
            if sample is not None:
                out["memory_usage_one_key"] = self.stack.redis.memory_usage(sample, samples=0)
                out["sample_key_shape"] = keys
        print(f"  {label}: {out['bytes_per_item']} bytes each", file=sys.stderr)
        return out

    async def commands(self, label: str, requests: list[bytes]) -> dict[str, Any]:
        """Redis commands (by name, Lua's included) and Redis CPU per request."""
        n = len(requests)
        before, cpu0 = self.stack.commandstats(), self.stack.cpu()
        await self.send(requests)
        after, cpu1 = self.stack.commandstats(), self.stack.cpu()
        per = {name: round((calls - before.get(name, 0)) / n, 2) for name, calls in after.items()
               if calls - before.get(name, 0) >= n / 100}
        per.pop("info", None)  # the measurement's own
        out = {"what": label, "requests": n, "commands_per_request": per,
               "redis_cpu_us_per_request": round((cpu1 - cpu0) / n * 1e6, 1)}
        print(f"  {label}: {per}, {out['redis_cpu_us_per_request']} us Redis CPU", file=sys.stderr)
        return out


async def measure(stack: Stack, items: int, client_counts: list[int]) -> dict[str, Any]:
    s = Sizing(stack)
    rss: list[dict[str, Any]] = [{"clients": "none yet (just started)",
                                  "worker_rss_mib": round(stack.worker_rss_mib(), 1)}]
    memory: list[dict[str, Any]] = []
    print("Redis memory per live item", file=sys.stderr)
    clients: list[dict[str, Any]] = []

    async def make_clients() -> None:
        clients.extend(await s.clients(items))

    memory.append(await s.per_item("client (record + listing indexes)", items, make_clients,
                                   "tsv:{c:*}:client"))
    one = clients[0]
    memory.append(await s.per_item("client_credentials access token (reuse off)", items,
                                   lambda: s.send([s.cc(one)] * items), "tsv:{g:*}:t:*"))
    password = "sizing password 0123"
    users = [s.admin("/admin/users", {"username": f"user-{i}", "password": password})
             for i in range(items)]
    memory.append(await s.per_item("user", items, lambda: s.send(users, 201), "tsv:{u:*}:user"))
    grants: list[dict[str, Any]] = []

    async def password_grants() -> None:
        grants.extend(await s.send([s.form("/oauth/token", {
            "grant_type": "password", "username": f"user-{i}", "password": password,
            "client_id": one["client_id"], "client_secret": one["client_secret"]})
            for i in range(items)]))

    memory.append(await s.per_item("password grant (access + refresh token, grant index, "
                                   "user's grant list)", items, password_grants))
    variants = items // 4
    reuse = (await s.clients(1, reuse_tokens=True,
                             scopes=["read", *(f"s{i}" for i in range(variants))]))[0]
    memory.append(await s.per_item(
        "reused client_credentials token (token + reuse record, one per client and scope set)",
        variants, lambda: s.send([s.cc(reuse, scope=f"read s{i}") for i in range(variants)]),
        "tsv:{g:*}:reuse"))

    print("Redis commands and CPU per request", file=sys.stderr)
    n = min(items, 5000)
    work = [await s.commands("client_credentials (reuse off)", [s.cc(one)] * n),
            await s.commands("client_credentials (reuse on, token still fresh)",
                             [s.cc(reuse, scope="read")] * n)]
    tokens = [doc["access_token"] for doc in await s.send([s.cc(one)] * 16)]
    work.append(await s.commands("introspection", [s.form("/oauth/introspect", {
        "token": tokens[i % 16], "client_id": one["client_id"],
        "client_secret": one["client_secret"]}) for i in range(n)]))
    work.append(await s.commands("refresh_token rotation", [s.form("/oauth/token", {
        "grant_type": "refresh_token", "refresh_token": grant["refresh_token"],
        "client_id": one["client_id"], "client_secret": one["client_secret"]})
        for grant in grants[:n]]))

    print("Worker memory by number of clients (each used once)", file=sys.stderr)
    for target in client_counts:
        while len(clients) < target:
            clients.extend(await s.clients(min(10000, target - len(clients))))
            print(f"  {len(clients)} clients", file=sys.stderr)
        await s.send([s.cc(c) for c in clients[:target]])
        rss.append({"clients": target, "worker_rss_mib": round(stack.worker_rss_mib(), 1)})
        print(f"  {target} clients used: worker RSS {rss[-1]['worker_rss_mib']} MiB", file=sys.stderr)
    info: dict[str, Any] = stack.redis.info("server")
    return {"redis_memory": memory, "redis_work": work, "worker_memory": rss,
            "record_variants": record_variants(stack, items),
            "redis_version": info["redis_version"]}


def record_variants(stack: Stack, n: int) -> dict[str, float]:
    """What a leaner token record would save: n token-shaped keys per variant written straight
    into a scratch database (the same key shape, TTL and value encoding as tokensvc's), bytes
    each by used_memory. Not tokensvc's code path: a what-if for deploy/SIZING.md."""
    scratch = redis.Redis(port=stack.redis_port, db=1)

    def b64(size: int) -> str:
        return base64.urlsafe_b64encode(os.urandom(size)).rstrip(b"=").decode()

    variants: dict[str, Callable[[str], dict[str, Any]]] = {
        "as stored today": lambda g: {"k": "at", "c": b64(16), "s": "read write", "g": g,
                                      "iat": 1795964250086, "exp": 1795967850086},
        "without the grant id": lambda g: {"k": "at", "c": b64(16), "s": "read write",
                                           "iat": 1795964250086, "exp": 1795967850086},
        "without the grant id, times in seconds": lambda g: {
            "k": "at", "c": b64(16), "s": "read write", "iat": 1795964250, "exp": 1795967850},
    }
    out: dict[str, float] = {}
    for name, make in variants.items():
        scratch.flushdb()
        before = stack.used_memory()
        pipe = scratch.pipeline(transaction=False)
        for _ in range(n):
            grant = b64(9)
            pipe.set(f"tsv:{{g:{grant}}}:t:{b64(32)}", json.dumps(make(grant), separators=(",", ":")),
                     px=3_600_000)
        pipe.execute()
        out[name] = round((stack.used_memory() - before) / n, 1)
        print(f"  token record {name}: {out[name]} bytes each", file=sys.stderr)
    scratch.flushdb()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sizing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=20000, help="items per memory figure")
    parser.add_argument("--clients", default="1000,20000,100000",
                        help="client counts for the worker-memory figure (ascending)")
    parser.add_argument("-o", "--output", type=Path, help="write the figures as JSON here")
    opts = parser.parse_args(argv)
    counts = [int(c) for c in opts.clients.split(",")]
    with tempfile.TemporaryDirectory(prefix="tokensvc-sizing-") as tmp:
        stack = Stack(Path(tmp))
        stack.start()
        try:
            doc = asyncio.run(measure(stack, opts.items, counts))
        finally:
            stack.stop()
    text = json.dumps(doc, indent=2)
    if opts.output:
        opts.output.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
