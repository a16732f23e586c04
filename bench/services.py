"""The processes a run starts: a private redis-server, `tokensvc serve`, the reference app,
the protected API of the resource-server scenarios and the generator-ceiling responder; each
on a free loopback port, optionally pinned to CPUs (taskset), each stopped again at the end.
CPU time of each is read from /proc."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.tls import TlsFiles

ROOT = Path(__file__).resolve().parent.parent


class StartError(RuntimeError):
    """A process did not start or did not become ready; the message says which and why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse_cpus(spec: str) -> set[int]:
    """`0`, `0,1`, `0-1` → a set of CPU numbers."""
    cpus: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            low, high = part.split("-", 1)
            cpus.update(range(int(low), int(high) + 1))
        else:
            cpus.add(int(part))
    if not cpus:
        raise ValueError(f"no CPU in {spec!r}")
    return cpus


def _all_cpus_if_restricted() -> str | None:
    """Every CPU, when this process is pinned (its children would inherit that otherwise)."""
    try:
        mine = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return None
    total = os.cpu_count() or len(mine)
    return None if len(mine) >= total else f"0-{total - 1}"


def pinned(cmd: list[str], cpus: str | None) -> list[str]:
    """The command under taskset when CPUs are given (and taskset exists). Unpinned commands
    get every CPU back when this process has pinned itself."""
    if cpus is None:
        cpus = _all_cpus_if_restricted()
        if cpus is None:
            return cmd
    parse_cpus(cpus)
    taskset = shutil.which("taskset")
    if taskset is None:
        raise StartError("pinning needs taskset (util-linux); install it or drop the --pin-* options")
    return [taskset, "-c", cpus, *cmd]


def pin_self(cpus: str | None) -> None:
    if cpus is not None:
        os.sched_setaffinity(0, parse_cpus(cpus))


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of every live process in a process group (the service and
    its workers)."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                raw = fh.read()
        except OSError:
            continue
        fields = raw[raw.rfind(b")") + 2:].split()
        # fields[0] is state (stat field 3); pgrp is field 5, utime 14, stime 15
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


@dataclass
class Proc:
    """A started process (its own session, so its workers can be signalled together)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    url: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu_seconds(self) -> float:
        return group_cpu_seconds(self.popen.pid)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise StartError(f"{self.name} exited with {self.popen.returncode}:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        # workers left behind by a supervisor that died first
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)


def _spawn(name: str, cmd: list[str], workdir: Path, env: Mapping[str, str] | None = None) -> Proc:
    log_path = workdir / f"{name}.log"
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 cwd=workdir, env=dict(env) if env is not None else None,
                                 start_new_session=True)
    return Proc(name, popen, log_path)


def http_get(url: str, timeout: float = 2.0, tls: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    try:
        # Only the http(s)://127.0.0.1 URLs of the services the bench started itself.
        with urllib.request.urlopen(url, timeout=timeout, context=tls) as resp:  # noqa: S310
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_http(proc: Proc, url: str, timeout: float = 30.0, tls: ssl.SSLContext | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        proc.check_alive()
        try:
            status, _ = http_get(url, timeout=1.0, tls=tls)
        except OSError as exc:
            last = str(exc)
        else:
            if status == 200:
                return
            last = f"HTTP {status}"
        time.sleep(0.05)
    raise StartError(f"{proc.name} was not ready at {url} within {timeout:.0f} s ({last}):\n"
                     f"{proc.log_tail()}")


async def _get_status(host: str, port: int, path: str, tls: ssl.SSLContext | None) -> int | None:
    reader, writer = await asyncio.open_connection(host, port, ssl=tls)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n")
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    try:
        return int(head.split()[1])
    except (IndexError, ValueError):
        return None


async def wait_http_async(proc: Proc, path: str = "/healthz", timeout: float = 60.0,
                          interval: float = 0.005, tls: ssl.SSLContext | None = None) -> float:
    """Poll `path` every few milliseconds without blocking the event loop (a load may be
    running on it) until it answers 200; returns the perf_counter() of that answer."""
    from bench.http import host_port

    host, port = host_port(proc.url)
    deadline = time.perf_counter() + timeout
    last = "no answer"
    while time.perf_counter() < deadline:
        proc.check_alive()
        try:
            status = await asyncio.wait_for(_get_status(host, port, path, tls), 2.0)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if status == 200:
                return time.perf_counter()
            last = f"HTTP {status}"
        await asyncio.sleep(interval)
    raise StartError(f"{proc.name} did not answer {path} within {timeout:.0f} s ({last}):\n"
                     f"{proc.log_tail()}")


def redis_version() -> str | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    for part in out.split():
        if part.startswith("v="):
            return part[2:]
    return out.strip() or None


def start_redis(workdir: Path, cpus: str | None) -> Proc:
    binary = shutil.which("redis-server")
    if binary is None:
        raise StartError("redis-server is not on PATH (Debian: apt-get install redis-server)")
    port = free_port()
    cmd = pinned([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                  "--appendonly", "no", "--dir", str(workdir), "--protected-mode", "no",
                  "--databases", "1"], cpus)
    proc = _spawn("redis", cmd, workdir)
    proc.url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        proc.check_alive()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    return proc
        except OSError:
            time.sleep(0.02)
    proc.stop()
    raise StartError(f"redis-server did not answer PING within 10 s:\n{proc.log_tail()}")


# Settings a started service gets unless `--set` says otherwise: no access log (one line per
# request would measure logging), and a code lifetime long enough for codes prepared before
# the timed phase to still be valid at its end.
DEFAULT_SERVICE_SETTINGS: dict[str, str] = {"log_level": "warning", "code_ttl": "900"}
SECRET_SETTINGS = ("admin_key", "secret_keys", "redis_url")


def service_settings(overrides: Mapping[str, str]) -> dict[str, str]:
    """Settings (lower-case names) for a started service: TOKENSVC_* of this environment, the
    bench's defaults, then `--set` values."""
    out: dict[str, str] = {}
    for key, value in os.environ.items():
        if key.startswith("TOKENSVC_"):
            out[key[len("TOKENSVC_"):].lower()] = value
    for key, value in DEFAULT_SERVICE_SETTINGS.items():
        out.setdefault(key, value)
    for key, value in overrides.items():
        out[key.lower().replace("-", "_")] = value
    return out


def shown_settings(settings: Mapping[str, str]) -> dict[str, str]:
    """Settings fit for a result file: keys and credentials masked."""
    return {k: ("***" if k in SECRET_SETTINGS else v) for k, v in sorted(settings.items())}


def start_tokensvc(workdir: Path, redis_url: str, workers: int, cpus: str | None,
                   settings: Mapping[str, str], timeout: float = 60.0, *, port: int | None = None,
                   tls: TlsFiles | None = None, wait: bool = True, name: str = "tokensvc") -> Proc:
    """`tokensvc serve` on a free loopback port (or `port`), waited for until /readyz answers
    unless `wait` is false (then the caller times its start itself). A second instance of the
    same deployment is started with the first one's `settings` (same Redis, admin key and
    server keys) and a `name` of its own (its log file)."""
    port = free_port() if port is None else port
    values = dict(settings)
    values.update({"host": "127.0.0.1", "port": str(port), "workers": str(workers),
                   "redis_url": redis_url, "data_dir": str(workdir / "var")})
    if tls is not None:
        values.update({"ssl_certfile": str(tls.certfile), "ssl_keyfile": str(tls.keyfile)})
    values.setdefault("admin_key", "bench-admin-" + secrets.token_urlsafe(24))
    values.setdefault("secret_keys", secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSVC_")}
    env.update({"TOKENSVC_" + k.upper(): v for k, v in values.items()})
    env.setdefault("PYTHONPATH", str(ROOT))
    cmd = pinned([sys.executable, "-m", "tokensvc", "serve"], cpus)
    proc = _spawn(name, cmd, workdir, env)
    proc.url = f"{'https' if tls is not None else 'http'}://127.0.0.1:{port}"
    proc.extra = {"admin_key": values["admin_key"]}
    proc.settings = values
    if wait:
        try:
            wait_http(proc, proc.url + "/readyz", timeout, tls.client_context() if tls else None)
        except BaseException:
            proc.stop()
            raise
    return proc


REFERENCE_KINDS = ("static", "noredis", "redis")


def start_reference(workdir: Path, cpus: str | None, redis_url: str | None = None,
                    raw: bool = False, timeout: float = 30.0, tls: TlsFiles | None = None) -> Proc:
    """The reference Starlette app (or, with `raw`, the generator-ceiling responder, over TLS
    when `tls` is given)."""
    port = free_port()
    cmd = [sys.executable, "-m", "bench.reference", "--port", str(port)]
    if raw:
        cmd.append("--raw")
        if tls is not None:
            cmd += ["--ssl-certfile", str(tls.certfile), "--ssl-keyfile", str(tls.keyfile)]
    elif tls is not None:
        raise ValueError("only the raw responder speaks TLS")
    if redis_url is not None:
        cmd += ["--redis-url", redis_url]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = _spawn("ceiling" if raw else "reference", pinned(cmd, cpus), workdir, env)
    proc.url = f"{'https' if tls is not None else 'http'}://127.0.0.1:{port}"
    try:
        wait_http(proc, proc.url + ("/" if raw else "/static"), timeout,
                  tls.client_context() if tls is not None else None)
    except BaseException:
        proc.stop()
        raise
    return proc


def start_api(workdir: Path, cpus: str | None, issuer: str, audience: str,
              client: Mapping[str, str] | None, cache_ttl: float, timeout: float = 30.0) -> Proc:
    """bench/resource_api.py under uvicorn (one worker) on a free port, configured by its
    environment, waited for until /healthz answers (its lifespan has fetched the issuer's
    metadata and keys by then)."""
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update({"BENCH_API_ISSUER": issuer, "BENCH_API_AUDIENCE": audience,
                "BENCH_API_CACHE_TTL": f"{cache_ttl:g}"})
    if client is not None:
        env.update({"BENCH_API_CLIENT_ID": client["client_id"],
                    "BENCH_API_CLIENT_SECRET": client["client_secret"]})
    cmd = pinned([sys.executable, "-m", "bench.resource_api", "--port", str(port)], cpus)
    proc = _spawn("api", cmd, workdir, env)
    proc.url = f"http://127.0.0.1:{port}"
    proc.settings = {"issuer": issuer, "audience": audience, "cache_ttl": f"{cache_ttl:g}",
                     "client": "set" if client is not None else "none"}
    try:
        wait_http(proc, proc.url + "/healthz", timeout)
    except BaseException:
        proc.stop()
        raise
    return proc


def workdir(prefix: str = "tokensvc-bench-") -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix=prefix)
