"""Real `tokensvc serve` processes, and other servers the tests run beside them.

`Process` is any server a test starts: its output goes to a log file in its work directory,
and a failure to start, to become ready or to stop fails the test with that log. `Service` is
`tokensvc serve` on a free port; `Service.deployed(redis_url, data_dir, ...)` is the test
deployment (the test keys, cheap argon2, the in-process tests' issuer) and `serving` starts
several of those together.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Self

import httpx
import pytest

from tests.support.config import ADMIN, TEST_SETTINGS, service_env
from tests.support.redis_servers import free_port

PYTHON_M_TOKENSVC = (sys.executable, "-m", "tokensvc")
READY_SECONDS = 30.0


class Process:
    """A server process with its log. With `own_group` it runs in a session of its own, and
    is stopped as a group: a supervisor's workers cannot outlive it."""

    name = "process"

    def __init__(self, workdir: Path, log_name: str, *, own_group: bool = True) -> None:
        self.workdir = workdir
        self.log = workdir / log_name
        self.own_group = own_group
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(list(argv), cwd=self.workdir, env=env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=self.own_group)

    @property
    def output(self) -> str:
        """What the process has printed so far (stdout and stderr)."""
        return self.log.read_text(errors="replace")

    def check_running(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            pytest.fail(f"{self.name} exited with {code}:\n{self.output}")

    def wait_until(self, ready: Callable[[], bool], what: str, timeout: float = READY_SECONDS) -> None:
        """Poll `ready` (an HTTP error counts as not yet) until it holds; the process must keep
        running meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_running()
            with suppress(httpx.HTTPError):
                if ready():
                    return
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"{self.name} was not {what} within {timeout} s:\n{self.output}")
            time.sleep(0.05)

    def _signal(self, sig: int) -> None:
        assert self.proc is not None
        with suppress(ProcessLookupError):
            if self.own_group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Signal it and wait; its exit code. One that does not stop in time is killed, and the
        test fails: a server must stop on its signal."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self._signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(10)
                pytest.fail(f"{self.name} did not stop on signal {sig}:\n{self.output}")
        return self.proc.returncode


class Service(Process):
    """One `tokensvc serve` on a free loopback port (a supervisor and its workers when
    workers > 1), started from `workdir`."""

    name = "tokensvc serve"

    def __init__(self, workdir: Path, env: dict[str, str], *, workers: int = 1, metrics_port: bool = False,
                 program: Sequence[str] = PYTHON_M_TOKENSVC, own_group: bool = True) -> None:
        self.port = free_port()
        super().__init__(workdir, f"serve-{self.port}.log", own_group=own_group)
        self.metrics_port = free_port() if metrics_port else 0
        self.workers = workers
        self.env = env
        self.program = program

    @classmethod
    def deployed(cls, redis_url: str, data_dir: Path, *, workers: int = 1, metrics_port: bool = False,
                 own_issuer: bool = False, **settings: Any) -> Self:
        """The test deployment on `redis_url`, its data (and log) in `data_dir`; `settings` by
        name, as TOKENSVC_* variables. Its issuer is the in-process tests' (tests/support/authflow.py
        checks redirects against it), or with `own_issuer` its own URL, for clients that follow
        the links it publishes (a browser, the OpenAPI document's server)."""
        env = service_env(**{**TEST_SETTINGS, "redis_url": redis_url, "data_dir": data_dir, **settings})
        svc = cls(data_dir, env, workers=workers, metrics_port=metrics_port)
        if own_issuer:
            svc.env["TOKENSVC_ISSUER"] = svc.url
        return svc

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def redis_url(self) -> str:
        return self.env["TOKENSVC_REDIS_URL"]

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port or self.port}/metrics"

    def start(self) -> Self:
        args = [*self.program, "serve", "--port", str(self.port)]
        if self.workers != 1:
            args += ["--workers", str(self.workers)]
        if self.metrics_port:
            args += ["--metrics-port", str(self.metrics_port)]
        self.spawn(args, self.env)
        return self

    def wait_ready(self, timeout: float = READY_SECONDS) -> dict[str, Any]:
        """Until /readyz is 200 with the invalidation subscription live, twice per worker in a
        row (each on a new connection, which any worker may take); its last answer."""
        doc: dict[str, Any] = {}
        in_a_row = 0

        def ready() -> bool:
            nonlocal doc, in_a_row
            in_a_row = 0
            while in_a_row < 2 * self.workers:
                resp = httpx.get(f"{self.url}/readyz", timeout=1.0)
                doc = resp.json() if resp.status_code == 200 else {}
                if not doc.get("invalidation"):
                    return False
                in_a_row += 1
            return True

        self.wait_until(ready, "ready", timeout)
        return doc

    def http(self, **kwargs: Any) -> httpx.AsyncClient:
        """A client for the service: `async with service.http() as http: ...`."""
        return httpx.AsyncClient(base_url=self.url, timeout=10.0, **kwargs)

    async def admin(self, method: str, path: str, json: Any = None) -> httpx.Response:
        """One call to the admin API (`/admin/...`) with the admin key."""
        async with self.http() as http:
            return await http.request(method, path, json=json, headers=ADMIN)

    async def create_client(self, **fields: Any) -> dict[str, Any]:
        """A new client (POST /admin/clients); its JSON, secret included."""
        body = {"name": "test client", "scopes": ["read", "write"], **fields}
        resp = await self.admin("POST", "/admin/clients", body)
        assert resp.status_code == 201, resp.text
        doc: dict[str, Any] = resp.json()
        return doc

    async def create_user(self, username: str = "alice", password: str = "correct horse",
                          verified: bool = True, **fields: Any) -> dict[str, Any]:
        """A new user (POST /admin/users); its JSON."""
        body = {"username": username, "password": password, "verified": verified, **fields}
        resp = await self.admin("POST", "/admin/users", body)
        assert resp.status_code == 201, resp.text
        doc: dict[str, Any] = resp.json()
        return doc


@contextmanager
def serving(redis_url: str, data_dir: Path, count: int = 1, **options: Any) -> Iterator[list[Service]]:
    """`count` services of the test deployment on one Redis, started together and all ready;
    stopped at the end."""
    services = [Service.deployed(redis_url, data_dir / f"svc-{i}", **options) for i in range(count)]
    try:
        for svc in services:
            svc.start()
        for svc in services:
            svc.wait_ready()
        yield services
    finally:
        for svc in services:
            svc.stop()
