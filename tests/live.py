"""Real `tokensvc serve` processes for the live tests, and load from several OS processes.

`Service` starts `python -m tokensvc serve` on a free port against a given Redis, with the test
keys and a cheap argon2, and waits until it is ready (Redis answers and the client-cache
invalidation subscription is live). `burst` fires many concurrent requests from several
processes at once, each process running its share concurrently on asyncio.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ADMIN_KEY, SECRET_KEY, free_port

ISSUER = "http://testserver"  # what tests/authflow.py expects as `iss`

# (method, path, form data, Basic credentials or None)
Call = tuple[str, str, dict[str, str], tuple[str, str] | None]
# (status, JSON body or None)
Answer = tuple[int, Any]


class Service:
    """One `tokensvc serve` process (a supervisor and its workers when workers > 1)."""

    def __init__(self, redis_url: str, data_dir: Path, *, workers: int = 1, metrics_port: bool = False,
                 **settings: str | int) -> None:
        self.port = free_port()
        self.metrics_port = free_port() if metrics_port else 0
        self.workers = workers
        self.data_dir = data_dir
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("TOKENSVC_") and k != "PROMETHEUS_MULTIPROC_DIR"}
        self.env.update({
            "TOKENSVC_REDIS_URL": redis_url, "TOKENSVC_ADMIN_KEY": ADMIN_KEY,
            "TOKENSVC_SECRET_KEYS": SECRET_KEY, "TOKENSVC_PASSWORD_TIME_COST": "1",
            "TOKENSVC_PASSWORD_MEMORY_COST": "1024", "TOKENSVC_DATA_DIR": str(data_dir),
            "TOKENSVC_ISSUER": ISSUER, "TOKENSVC_REDIS_TIMEOUT": "0.5",
        })
        self.env.update({f"TOKENSVC_{name.upper()}": str(value) for name, value in settings.items()})
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.data_dir / "serve.log"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port or self.port}/metrics"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "tokensvc", "serve", "--port", str(self.port),
                "--workers", str(self.workers)]
        if self.metrics_port:
            args += ["--metrics-port", str(self.metrics_port)]
        # The service's log, for when a test fails.
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def wait_ready(self, limit: float = 30.0) -> None:
        """Until /readyz is 200 with the invalidation subscription live (on every worker asked)."""
        deadline = time.monotonic() + limit
        live = 0
        while live < 2 * self.workers:
            assert self.proc is not None and self.proc.poll() is None, "tokensvc exited"
            assert time.monotonic() < deadline, "tokensvc did not become ready"
            try:
                resp = httpx.get(f"{self.url}/readyz", timeout=1)  # a new connection each time
                live = live + 1 if resp.status_code == 200 and resp.json()["invalidation"] else 0
            except httpx.HTTPError:
                live = 0
            if live == 0:
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            with _suppress_lookup():
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
            self.proc = None


@contextmanager
def _suppress_lookup() -> Iterator[None]:
    try:
        yield
    except ProcessLookupError:
        pass


@contextmanager
def serving(redis_url: str, data_dir: Path, count: int = 1, **options: Any) -> Iterator[list[Service]]:
    """`count` services on one Redis, started together and all ready; stopped at the end."""
    services = [Service(redis_url, data_dir / f"svc-{i}", **options) for i in range(count)]
    try:
        for svc in services:
            svc.start()
        for svc in services:
            svc.wait_ready()
        yield services
    finally:
        for svc in services:
            svc.stop()


# -- load from several processes ---------------------------------------------------------------

def _fire(base_url: str, calls: Sequence[Call], start_at: float) -> list[Answer]:
    """In a pool process: wait for the common start time, then send every call at once."""

    async def run() -> list[Answer]:
        limits = httpx.Limits(max_connections=len(calls), max_keepalive_connections=len(calls))
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as http:
            # Open the connections before the start, so the requests themselves arrive together.
            await asyncio.gather(*(http.get("/healthz") for _ in calls))
            await asyncio.sleep(max(0.0, start_at - time.time()))

            async def one(call: Call) -> Answer:
                method, path, data, auth = call
                resp = await http.request(method, path, data=data, auth=auth)
                try:
                    body = resp.json()
                except ValueError:
                    body = None
                return resp.status_code, body

            return list(await asyncio.gather(*(one(call) for call in calls)))

    return asyncio.run(run())


@contextmanager
def process_pool(processes: int = 4) -> Iterator[ProcessPoolExecutor]:
    """Spawned (not forked) processes: the test process has threads and event loops."""
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        # Start every process now (imports included), not when the first burst is fired.
        list(pool.map(_ready, range(processes * 2)))
        yield pool


def _ready(_: int) -> bool:
    time.sleep(0.05)
    return True


def burst(pool: ProcessPoolExecutor, base_url: str, calls: Sequence[Call], processes: int = 4,
          delay: float = 1.0) -> list[Answer]:
    """Split `calls` over `processes` pool processes; all of them start `delay` s from now."""
    start_at = time.time() + delay
    shares = [list(calls[i::processes]) for i in range(processes)]
    futures = [pool.submit(_fire, base_url, share, start_at) for share in shares if share]
    return [answer for future in futures for answer in future.result(timeout=120)]


# -- metrics -------------------------------------------------------------------------------------

def metric(url: str, name: str, **labels: str) -> float:
    """The sum of every series of `name` whose labels include `labels`, from one scrape."""
    want = set(labels.items())
    total = 0.0
    for family in text_string_to_metric_families(httpx.get(url, timeout=5).text):
        for sample in family.samples:
            if sample.name == name and want <= set(sample.labels.items()):
                total += sample.value
    return total


def settled_metric(url: str, name: str, expected: float, limit: float = 5.0, **labels: str) -> float:
    """Workers flush their counts every second: wait for `expected` (or the deadline), then one
    flush period more, and return the value then (so a count past `expected` shows too)."""
    deadline = time.monotonic() + limit
    while metric(url, name, **labels) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.2)
    return metric(url, name, **labels)
