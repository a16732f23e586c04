"""The embedded Redis: a private `redis-server` child for when no Redis URL is configured.

It exists so that the first `tokensvc serve` needs nothing set up by hand, while keeping
real Redis semantics (Lua scripts, TTLs, pub/sub) rather than an in-process imitation.
It listens on a unix socket under the data dir only (`--port 0`), so it never takes TCP 6379
from a system Redis and no other user on the machine can reach it (`--unixsocketperm 700`).
Its data survives restarts through the append-only file (fsync every second); there are no
RDB snapshots, whose fork would stall a busy server for nothing.

The admin CLI finds the same server through the same socket (`running_url`), so commands run
from the service's directory reach the service's data without any configuration.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

SOCKET_NAME = "redis.sock"
PIDFILE_NAME = "redis.pid"
LOGFILE_NAME = "redis.log"
# The pid of the tokensvc process responsible for stopping the server.
OWNER_NAME = "redis.owner"
LOCK_NAME = "redis.lock"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
# sun_path holds 108 bytes on Linux (104 on macOS), including the terminating NUL.
_MAX_SOCKET_PATH = 103 if sys.platform == "darwin" else 107

INSTALL_HINT = ("install it (Debian/Ubuntu: `apt-get install redis-server`; macOS: `brew install redis`)"
                " or pass --redis-url / set TOKENSVC_REDIS_URL to use an existing Redis")


class EmbeddedRedisError(RuntimeError):
    """The embedded redis-server cannot be found, started or reached; the message says why."""


def socket_path(data_dir: Path) -> Path:
    """Where the embedded server listens: absolute, so every worker and CLI agrees on it."""
    return data_dir.resolve() / SOCKET_NAME


def socket_url(path: Path) -> str:
    return f"unix://{path}"


def _client(path: Path, timeout: float) -> redis.Redis:
    """A client that never retries: redis-py's default backoff would turn a dead socket's
    "connection refused" (a crashed run's leftover, a server that just shut down) into seconds."""
    return redis.Redis(unix_socket_path=str(path), socket_timeout=timeout,
                       socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))


def _answers(path: Path, timeout: float = 0.5) -> bool:
    """True when a Redis server answers PING on the unix socket at `path`."""
    if not path.exists():
        return False
    client = _client(path, timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def running_url(data_dir: Path) -> str | None:
    """The URL of an embedded server already answering under `data_dir`, else None.

    For the admin commands: they use the service's Redis but never start one, because a
    server started by a short-lived command would hold the data while no service runs."""
    path = socket_path(data_dir)
    return socket_url(path) if _answers(path) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, but belongs to someone else
        return True
    return True


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _die_with_parent() -> None:
    """In the child before exec (Linux): get SIGTERM if the parent dies, even by SIGKILL, so a
    crashed service leaves no Redis behind. The parent's handlers cover every orderly stop."""
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


def _child_env() -> dict[str, str]:
    """The environment for redis-server, less TOKENSVC_* (which may hold the admin key)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TOKENSVC_")}


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


class EmbeddedRedis:
    """One private redis-server under `data_dir`: started, or reused if one already answers.

    `start()` returns the URL to connect to; `stop()` ends the server if this process is
    responsible for it: it started it, or adopted one whose starter has died. A server
    started by another live tokensvc in the same directory is shared and left running."""

    def __init__(self, data_dir: Path, *, binary: str | None = None,
                 start_timeout: float = START_TIMEOUT) -> None:
        self.data_dir = data_dir.resolve()
        self.socket = socket_path(self.data_dir)
        self.url = socket_url(self.socket)
        self.binary = binary
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.owned = False  # whether stop() ends the server
        self.reused = False

    @property
    def pidfile(self) -> Path:
        return self.data_dir / PIDFILE_NAME

    @property
    def logfile(self) -> Path:
        return self.data_dir / LOGFILE_NAME

    def start(self) -> str:
        """Make sure a server answers on the socket, and return its URL."""
        if len(os.fsencode(self.socket)) > _MAX_SOCKET_PATH:
            raise EmbeddedRedisError(
                f"the embedded Redis socket path {self.socket} is longer than the {_MAX_SOCKET_PATH} bytes "
                "a unix socket allows; use a shorter --data-dir (TOKENSVC_DATA_DIR) or pass --redis-url")
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The lock makes check-then-start atomic: two services starting at once in the same
        # directory must not run two servers over one append-only file.
        with self._lock():
            if _answers(self.socket):
                self.reused = True
                owner = _read_pid(self.data_dir / OWNER_NAME)
                if owner is None or owner == os.getpid() or not _alive(owner):
                    self._claim()  # left behind by a run that died: ours to stop now
                return self.url
            self._spawn()
            self._claim()
        return self.url

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        fd = os.open(self.data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _claim(self) -> None:
        (self.data_dir / OWNER_NAME).write_text(f"{os.getpid()}\n")
        self.owned = True

    def _spawn(self) -> None:
        binary = self.binary or shutil.which("redis-server")
        if binary is None:
            raise EmbeddedRedisError(
                "no Redis URL is configured, so tokensvc would start its own redis-server, "
                f"but `redis-server` is not on PATH: {INSTALL_HINT}")
        d = self.data_dir
        args = [
            binary,
            "--port", "0",  # no TCP listener at all: never 6379, never reachable from the network
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(d),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--pidfile", str(d / PIDFILE_NAME),
            "--logfile", str(d / LOGFILE_NAME),
            "--daemonize", "no",
        ]
        preexec: Callable[[], None] | None = _die_with_parent if sys.platform.startswith("linux") else None
        with open(self.logfile, "ab") as log:
            # A session of its own: a Ctrl-C in the terminal goes to the service, which drains
            # its requests first and only then stops Redis, instead of both stopping at once.
            # No shell: the configured redis-server (or the one on PATH) with the arguments above.
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,  # noqa: S603
                                         env=_child_env(), start_new_session=True, preexec_fn=preexec)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise EmbeddedRedisError(
                    f"redis-server exited with code {code} at start; the end of {self.logfile}:\n"
                    f"{_tail(self.logfile)}")
            if _answers(self.socket, timeout=0.2):
                return
            time.sleep(0.02)
        self._terminate()
        raise EmbeddedRedisError(
            f"redis-server did not answer on {self.socket} within {self.start_timeout:g} s; the end of "
            f"{self.logfile}:\n{_tail(self.logfile)}")

    def stop(self) -> None:
        """Stop the server if this process is responsible for it; otherwise leave it running."""
        if not self.owned:
            return
        self.owned = False
        if self.proc is not None:
            self._terminate()
        else:
            self._shutdown_adopted()
        owner = self.data_dir / OWNER_NAME
        if _read_pid(owner) == os.getpid():
            owner.unlink(missing_ok=True)

    def _terminate(self) -> None:
        """SIGTERM makes Redis flush the append-only file and exit; wait for it, bounded."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)

    def _shutdown_adopted(self) -> None:
        """An adopted server is not our child: ask it over its socket to shut down (which
        names exactly that server, unlike a pid that may have been reused), then wait."""
        pid = _read_pid(self.pidfile)
        client = _client(self.socket, STOP_TIMEOUT)
        try:
            client.shutdown()
        except (redis.RedisError, OSError):
            pass  # already gone, or it closed the connection while exiting
        finally:
            client.close()
        # Redis removes its pidfile after the final fsync, just before it exits.
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline and self.pidfile.exists() and pid is not None and _alive(pid):
            time.sleep(0.05)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
