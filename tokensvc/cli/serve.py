"""`tokensvc serve`: run the service under uvicorn, with its own redis-server when needed.

Before any worker exists it starts the embedded Redis (when no Redis URL is set), makes sure
the generated keys exist, checks this instance's server keys against the deployment, prepares
the metrics files, and prints a banner saying where things are; then it hands over to uvicorn
and, on every way out, stops the embedded Redis again.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import os
import shutil
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import click
import uvicorn
from uvicorn.config import LOGGING_CONFIG

from tokensvc import __version__, keyfiles
from tokensvc.cli.base import (
    DEFAULTS,
    CliError,
    SettingsProblem,
    load_settings,
    main,
    masked,
    setting_options,
)
from tokensvc.http.httpprotocol import HeaderDeadlineProtocol
from tokensvc.keyring import Keyring
from tokensvc.settings import ENV_PREFIX, Settings, SettingsError
from tokensvc.store.embedded import EmbeddedRedis, EmbeddedRedisError
from tokensvc.store.redis import open_store

# Idle keep-alive connections are closed after this many seconds by default (the
# keep_alive_timeout setting): long enough for a client that
# fetches a token and then introspects or refreshes it to reuse its connection, short enough that
# idle connections from many service instances do not pile up. A load balancer in front should
# use a shorter idle timeout than this, so it never sends on a connection uvicorn is closing.
KEEP_ALIVE_SECONDS = DEFAULTS.keep_alive_timeout
# On SIGTERM, in-flight requests (milliseconds each) may finish; a connection still busy after
# this is cut, so a stop always completes within a bounded time.
GRACEFUL_SHUTDOWN_SECONDS = 10


def _base_url(cfg: Settings) -> str:
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    scheme = "https" if cfg.ssl_certfile is not None else "http"
    return f"{scheme}://{host}:{cfg.port}"


def _command_name() -> str:
    """How this user can run `tokensvc` again: bare if it is on PATH, else the way it was run
    (`make run` runs `.venv/bin/tokensvc`, which is not on PATH)."""
    argv0 = sys.argv[0] if sys.argv else ""
    if Path(argv0).name != "tokensvc":
        return "python -m tokensvc"
    found = shutil.which("tokensvc")
    if found is not None and Path(found).resolve() == Path(argv0).resolve():
        return "tokensvc"
    return argv0


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    """SIGTERM/SIGINT outside uvicorn's own handling: unwind (running `finally` blocks) and exit 0.

    uvicorn re-raises the signal that stopped it once it has shut down; with the default
    handler that would kill the process before the embedded redis-server is stopped."""
    raise SystemExit(0)


@main.command()
@setting_options()
def serve(**flags: Any) -> None:
    """Run the service (uvicorn) until SIGTERM or Ctrl-C.

    Every flag can also be set as TOKENSVC_<NAME> (flags win). With no Redis URL, a private
    redis-server is started under the data dir and stopped again when the service stops.
    """
    cfg = load_settings(flags)
    # Until uvicorn takes them over (and after it hands them back), SIGTERM and SIGINT unwind
    # through the `finally` below, so the embedded redis-server is stopped on every exit.
    signal.signal(signal.SIGTERM, _raise_exit)
    signal.signal(signal.SIGINT, _raise_exit)
    embedded: EmbeddedRedis | None = None
    try:
        if cfg.redis_url is None:
            embedded = EmbeddedRedis(cfg.data_dir)
            try:
                url = embedded.start()
            except EmbeddedRedisError as exc:
                raise CliError(str(exc)) from None
            cfg = dataclasses.replace(cfg, redis_url=url)
        admin_key_given = cfg.admin_key is not None
        try:
            cfg = keyfiles.with_generated_keys(cfg)
        except OSError as exc:
            raise CliError(f"cannot keep the generated keys under {cfg.data_dir}: {exc}") from None
        except SettingsError as exc:
            raise SettingsProblem(str(exc)) from None
        _check_keys(cfg)
        _banner(cfg, embedded, admin_key_given)
        # create_app() in each worker reads its settings from the environment.
        os.environ.update(cfg.to_env())
        if cfg.metrics:
            _metrics_files(cfg)
        uvicorn.run(
            "tokensvc.app:create_app", factory=True, host=cfg.host, port=cfg.port,
            workers=cfg.workers, loop="uvloop", http=HeaderDeadlineProtocol, lifespan="on",
            log_level=cfg.log_level, log_config=_log_config(cfg.log_level),
            access_log=cfg.access_log,
            # Idle connections between requests; a request head that does not arrive within
            # request_timeout is cut by HeaderDeadlineProtocol, a body by params.read_body (408).
            timeout_keep_alive=cfg.keep_alive_timeout,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
            ssl_certfile=cfg.ssl_certfile, ssl_keyfile=cfg.ssl_keyfile,
            # Off: uvicorn would believe X-Forwarded-For from 127.0.0.1 (or FORWARDED_ALLOW_IPS)
            # whatever trusted_proxies says. The app applies that setting itself, to
            # X-Forwarded-For and Forwarded alike (http/forwarded.py says why).
            proxy_headers=False,
        )
        # No limit_concurrency: uvicorn would answer excess requests with a plain-text 503, not
        # the contract's JSON error; the Redis pool size already bounds the work in flight.
    finally:
        # A second signal must not cut the stop of Redis short (it is bounded on its own).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if embedded is not None:
            embedded.stop()


def _check_keys(cfg: Settings) -> None:
    """Refuse to start, before any worker exists, when this instance's server keys would split
    the fleet (fleet.py); each worker checks again as it starts. An unreachable Redis is no
    reason to refuse: the workers answer 503 until it is back, and check then."""
    from tokensvc.fleet import Fleet, KeyMismatch

    # Type narrowing: serve() sets the Redis URL (the embedded one) before calling this.
    assert cfg.redis_url is not None  # noqa: S101
    url = cfg.redis_url

    async def check() -> None:
        store = open_store(url, cluster=cfg.redis_cluster, timeout=cfg.redis_timeout, pool_size=2)
        try:
            fleet = Fleet(store.redis, Keyring(cfg.secret_keys), cfg.fleet_heartbeat)
            members, _, recorded = await fleet.members()
            fleet.check(members, recorded)
        finally:
            await store.close()

    try:
        asyncio.run(check())
    except KeyMismatch as exc:
        raise CliError(str(exc)) from None
    except Exception as exc:  # Redis not reachable yet
        click.echo(f"warning: server keys not checked against the deployment yet ({exc})", err=True)


def _metrics_files(cfg: Settings) -> None:
    """Every worker writes its metrics to files in one directory, so a scrape sums them all and
    a restarted worker's counts survive it. The directory is emptied at start (prometheus-client
    requires it: stale files would add a previous run's counts). With `metrics_port`, this
    process serves the scrape on that port, away from the public one."""
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    path = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or cfg.data_dir / f"metrics-{cfg.port}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
    except OSError as exc:
        raise CliError(f"cannot use {path} for the metrics files: {exc}") from None
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path.resolve())
    if cfg.metrics_port:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        try:
            start_http_server(cfg.metrics_port, addr=cfg.host, registry=registry)
        except OSError as exc:
            raise CliError(f"cannot serve metrics on {cfg.host}:{cfg.metrics_port}: {exc}") from None


def _log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging, plus a handler for tokensvc's own loggers: without one, the audit
    lines (INFO on `tokensvc.audit`) of the admin API and console would go nowhere. The audit
    log stays at INFO whatever the service's level: who changed what must not be lost."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["tokensvc"] = {"handlers": ["default"], "level": level.upper(),
                                     "propagate": False}
    config["loggers"]["tokensvc.audit"] = {"handlers": ["default"], "level": "INFO",
                                           "propagate": False}
    return config


def _banner(cfg: Settings, embedded: EmbeddedRedis | None, admin_key_given: bool) -> None:
    """Where things are and how to start: printed once, before uvicorn's own log lines."""
    base = _base_url(cfg)
    # Type narrowing: serve() sets the Redis URL (the embedded one) before calling this.
    assert cfg.redis_url is not None  # noqa: S101
    workers = f"{cfg.workers} worker{'s' if cfg.workers != 1 else ''}"
    lines = [f"tokensvc {__version__} on {base} ({workers})"]
    create = f"{_command_name()} client create --name demo"
    if embedded is not None:
        state = "reusing the running" if embedded.reused else "started a private"
        lines.append(f"  redis:     {state} redis-server, data in {embedded.data_dir} ({embedded.url})")
        if cfg.data_dir != DEFAULTS.data_dir:
            create += f" --data-dir {cfg.data_dir}"
    else:
        lines.append(f"  redis:     {masked(cfg.redis_url)}")
        create += " --redis-url <the same URL>"
    if admin_key_given:
        lines.append(f"  admin key: the one set by --admin-key / {ENV_PREFIX}ADMIN_KEY")
    else:
        key_file = (cfg.data_dir / "admin.key").resolve()
        lines.append(f"  admin key: in {key_file} (send it as `Authorization: Bearer <key>` to /admin)")
    lines.append(f"  a first token: `{create}`, then `curl -u CLIENT_ID:CLIENT_SECRET "
                 f"-d grant_type=client_credentials {base}/oauth/token`")
    click.echo("\n".join(lines), err=True)
