"""The `tokensvc` command: `serve` runs the service, `client` and `user` administer it.

`serve` takes every setting of `tokensvc.settings.OPTIONS` as a flag, generated from that
table so that a new setting can never be missing from the CLI. The flags are plain strings
handed to `settings.load`, which also reads `TOKENSVC_*`: one parser, so a bad value gets the
same message (naming the setting) whether it came from a flag or from the environment.

The admin commands talk to Redis directly, through the same Registry the admin API uses, so
the rules for clients and users are the same whichever way they are created. They find Redis
the way `serve` does: `--redis-url` / `TOKENSVC_REDIS_URL`, else the embedded server's socket
under the data dir, which they use but never start.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import os
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import click
import uvicorn
from uvicorn.config import LOGGING_CONFIG

from tokensvc import __version__, settings as settings_mod
from tokensvc.errors import OAuthError, StoreUnavailable
from tokensvc.grants import GRANT_TYPES
from tokensvc.hashing import Hasher
from tokensvc.httpprotocol import HeaderDeadlineProtocol
from tokensvc.keyring import Keyring
from tokensvc.registry import Registry, client_view, user_view
from tokensvc.settings import ENV_PREFIX, OPTIONS, Option, Settings, SettingsError
from tokensvc.store.embedded import EmbeddedRedis, EmbeddedRedisError, running_url
from tokensvc.store.redis import RedisStore, connect, connect_cluster

T = TypeVar("T")
FC = TypeVar("FC", bound=Callable[..., Any])

_DEFAULTS = Settings()
# Idle keep-alive connections are closed after this many seconds by default (the
# keep_alive_timeout setting): long enough for a client that
# fetches a token and then introspects or refreshes it to reuse its connection, short enough that
# idle connections from many service instances do not pile up. A load balancer in front should
# use a shorter idle timeout than this, so it never sends on a connection uvicorn is closing.
KEEP_ALIVE_SECONDS = _DEFAULTS.keep_alive_timeout
# On SIGTERM, in-flight requests (milliseconds each) may finish; a connection still busy after
# this is cut, so a stop always completes within a bounded time.
GRACEFUL_SHUTDOWN_SECONDS = 10
NO_REDIS_HINT = "start `tokensvc serve` first or pass --redis-url"


class CliError(click.ClickException):
    """A failure the user can act on: printed as `Error: ...`, without a traceback; exit 1."""

    exit_code = 1


class SettingsProblem(CliError):
    """A setting is unknown or malformed: exit 2, as for any other bad command line."""

    exit_code = 2


def _metavar(default: object) -> str:
    if isinstance(default, int):
        return "INTEGER"
    if isinstance(default, float):
        return "SECONDS"
    if isinstance(default, Path):
        return "DIR"
    return "TEXT"


def _setting_option(opt: Option) -> Callable[[FC], FC]:
    """The flag of one setting. Its value stays a string (or None when absent) for settings.load."""
    flag = "--" + opt.name.replace("_", "-")
    default = getattr(_DEFAULTS, opt.name)
    if isinstance(default, bool):
        shown = f"; default {'on' if default else 'off'}"
    else:
        shown = "" if default in (None, ()) else f"; default {default}"
    help_text = f"{opt.help} [env {ENV_PREFIX}{opt.name.upper()}{shown}]"
    if isinstance(default, bool):
        return click.option(f"{flag}/--no-{flag[2:]}", opt.name, default=None, help=help_text)
    return click.option(flag, opt.name, default=None, metavar=_metavar(default), help=help_text)


def _setting_options(names: tuple[str, ...] | None = None) -> Callable[[FC], FC]:
    """Flags for the named settings (all of OPTIONS by default), in OPTIONS' order."""
    chosen = [opt for opt in OPTIONS if names is None or opt.name in names]

    def decorate(func: FC) -> FC:
        for opt in reversed(chosen):
            func = _setting_option(opt)(func)
        return func

    return decorate


def load_settings(flags: Mapping[str, Any]) -> Settings:
    """Settings from `TOKENSVC_*` and the given flags; a bad one ends the command with exit 2."""
    try:
        return settings_mod.load(flags)
    except SettingsError as exc:
        raise SettingsProblem(str(exc)) from None


def _masked(url: str) -> str:
    """A Redis URL fit to print: any password replaced."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


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


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="tokensvc")
def main() -> None:
    """tokensvc: an OAuth 2.0 token service.

    `tokensvc serve` runs it (with its own redis-server when no Redis URL is given);
    `tokensvc client ...` and `tokensvc user ...` manage clients and users in the same Redis.
    Every setting can also be given as an environment variable TOKENSVC_<NAME>.
    """


@main.command()
@_setting_options()
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
            cfg = settings_mod.with_generated_keys(cfg)
        except OSError as exc:
            raise CliError(f"cannot keep the generated keys under {cfg.data_dir}: {exc}") from None
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

    assert cfg.redis_url is not None
    url = cfg.redis_url

    async def check() -> None:
        store = RedisStore(connect_cluster(url, timeout=cfg.redis_timeout, pool_size=2)
                           if cfg.redis_cluster else
                           connect(url, timeout=cfg.redis_timeout, pool_size=2))
        try:
            fleet = Fleet(store, Keyring(cfg.secret_keys), cfg.fleet_heartbeat)
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
    assert cfg.redis_url is not None
    workers = f"{cfg.workers} worker{'s' if cfg.workers != 1 else ''}"
    lines = [f"tokensvc {__version__} on {base} ({workers})"]
    create = f"{_command_name()} client create --name demo"
    if embedded is not None:
        state = "reusing the running" if embedded.reused else "started a private"
        lines.append(f"  redis:     {state} redis-server, data in {embedded.data_dir} ({embedded.url})")
        if cfg.data_dir != _DEFAULTS.data_dir:
            create += f" --data-dir {cfg.data_dir}"
    else:
        lines.append(f"  redis:     {_masked(cfg.redis_url)}")
        create += " --redis-url <the same URL>"
    if admin_key_given:
        lines.append(f"  admin key: the one set by --admin-key / {ENV_PREFIX}ADMIN_KEY")
    else:
        key_file = (cfg.data_dir / "admin.key").resolve()
        lines.append(f"  admin key: in {key_file} (send it as `Authorization: Bearer <key>` to /admin)")
    lines.append(f"  a first token: `{create}`, then `curl -u CLIENT_ID:CLIENT_SECRET "
                 f"-d grant_type=client_credentials {base}/oauth/token`")
    click.echo("\n".join(lines), err=True)


# -- admin commands -----------------------------------------------------------------------


def _admin_settings(flags: Mapping[str, Any]) -> Settings:
    """Settings with a Redis URL: the configured one, else the running embedded server's."""
    cfg = load_settings(flags)
    if cfg.redis_url is None:
        url = running_url(cfg.data_dir)
        if url is None:
            raise CliError(
                f"no Redis to talk to: no --redis-url or {ENV_PREFIX}REDIS_URL is set, and no embedded "
                f"redis-server is running under {cfg.data_dir.resolve()}; {NO_REDIS_HINT}")
        cfg = dataclasses.replace(cfg, redis_url=url)
    return cfg


def _cli_verifier(cfg: Settings) -> Callable[[str, str], str] | None:
    """Secret verifiers under the deployment's keys when this command knows them (set, or the
    embedded default's key file). None otherwise, never a freshly generated key: the first
    worker that verifies the secret then writes the verifier."""
    if cfg.argon2_per_worker:
        return None
    keys = cfg.secret_keys
    key_file = cfg.data_dir / "secret.key"
    if not keys and key_file.is_file():
        keys = (key_file.read_text().strip(),)
    return Keyring(keys).secret_verifier if keys else None


def _run_admin(flags: Mapping[str, Any], action: Callable[[Registry], Awaitable[T]]) -> T:
    """Run one registry action against the service's Redis; its refusals exit 1 with their text."""
    cfg = _admin_settings(flags)
    assert cfg.redis_url is not None
    url = cfg.redis_url

    async def run() -> T:
        store = RedisStore(connect(url, timeout=cfg.redis_timeout, pool_size=4),
                           ack_timeout=cfg.redis_timeout)
        hasher = Hasher(cfg.password_time_cost, cfg.password_memory_cost, cfg.password_parallelism)
        try:
            return await action(Registry(store, hasher, _cli_verifier(cfg)))
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except OAuthError as exc:
        raise CliError(exc.description) from None
    except StoreUnavailable as exc:
        raise CliError(f"Redis at {_masked(url)} is not reachable ({exc}); {NO_REDIS_HINT}") from None


def _print_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2))


_admin_options = _setting_options(("redis_url", "data_dir", "redis_timeout"))


@main.group()
def client() -> None:
    """Create and inspect OAuth clients (in the Redis the service uses)."""


@client.command("create")
@click.option("--name", required=True, help="Display name of the client.")
@click.option("--redirect-uri", "redirect_uris", multiple=True, metavar="URI",
              help="Registered redirect URI (repeatable).")
@click.option("--scope", "scopes", multiple=True, metavar="SCOPE",
              help="Scope the client may ask for (repeatable).")
@click.option("--grant-type", "grant_types", multiple=True, metavar="GRANT",
              help=f"Grant type (repeatable): {', '.join(GRANT_TYPES)}. Default: all that fit the client.")
@click.option("--website", help="The client's website, shown on the consent page.")
@click.option("--public", is_flag=True,
              help="A public client (no secret, token_endpoint_auth_method none).")
@_admin_options
def client_create(name: str, redirect_uris: tuple[str, ...], scopes: tuple[str, ...],
                  grant_types: tuple[str, ...], website: str | None, public: bool, **flags: Any) -> None:
    """Create a client and print it as JSON, with its secret: the only time the secret is shown."""
    doc: dict[str, Any] = {"name": name, "redirect_uris": list(redirect_uris), "scopes": list(scopes)}
    if grant_types:
        doc["grant_types"] = list(grant_types)
    if website is not None:
        doc["website"] = website
    if public:
        doc["token_endpoint_auth_method"] = "none"

    async def create(registry: Registry) -> dict[str, Any]:
        made, secret = await registry.create_client(doc)
        return client_view(made, secret)

    _print_json(_run_admin(flags, create))


@client.command("list")
@_admin_options
def client_list(**flags: Any) -> None:
    """Print every active client as a JSON list, newest first (no secrets)."""

    async def everything(registry: Registry) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        while True:
            page, total = await registry.store.list_clients(len(found), 1000)
            found += [client_view(c) for c in page]
            if not page or len(found) >= total:
                return found

    _print_json(_run_admin(flags, everything))


@client.command("show")
@click.argument("client_id")
@_admin_options
def client_show(client_id: str, **flags: Any) -> None:
    """Print one client as JSON (no secret)."""

    async def show(registry: Registry) -> dict[str, Any]:
        return client_view(await registry.client(client_id))

    _print_json(_run_admin(flags, show))


@client.command("rotate-secret")
@click.argument("client_id")
@_admin_options
def client_rotate_secret(client_id: str, **flags: Any) -> None:
    """Give a client a new secret (the old one stops working) and print it once, as JSON."""

    async def rotate(registry: Registry) -> dict[str, Any]:
        made, secret = await registry.rotate_secret(client_id)
        return client_view(made, secret)

    _print_json(_run_admin(flags, rotate))


@client.command("revoke")
@click.argument("client_id")
@_admin_options
def client_revoke(client_id: str, **flags: Any) -> None:
    """Revoke a client: it and every token and code it holds stop working at once."""

    async def revoke(registry: Registry) -> None:
        await registry.revoke_client(client_id)

    _run_admin(flags, revoke)
    click.echo(f"revoked client {client_id}", err=True)


@main.group()
def user() -> None:
    """Create and manage users (resource owners of the password grant)."""


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        text = sys.stdin.read()
        # One trailing newline is the `echo`'s, not the password's.
        return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text
    if not sys.stdin.isatty():
        raise CliError("no terminal to ask for the password on; pass --password-stdin and pipe it in")
    password: str = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    return password


@user.command("create")
@click.option("--username", required=True, help="The user's login name.")
@click.option("--password-stdin", is_flag=True,
              help="Read the password from standard input (otherwise it is asked for).")
@click.option("--verified/--unverified", default=False, show_default=True,
              help="Whether the user is verified (clients may require verified users).")
@_admin_options
def user_create(username: str, password_stdin: bool, verified: bool, **flags: Any) -> None:
    """Create a user and print it as JSON (never the password)."""
    password = _read_password(password_stdin)

    async def create(registry: Registry) -> dict[str, Any]:
        made = await registry.create_user({"username": username, "password": password,
                                           "verified": verified})
        return user_view(made)

    _print_json(_run_admin(flags, create))


@user.command("show")
@click.argument("username")
@_admin_options
def user_show(username: str, **flags: Any) -> None:
    """Print a user as JSON, with their count of consecutive failed logins."""

    async def show(registry: Registry) -> dict[str, Any]:
        found, failures = await registry.user(username)
        return user_view(found, failures)

    _print_json(_run_admin(flags, show))


@user.command("unlock")
@click.argument("username")
@_admin_options
def user_unlock(username: str, **flags: Any) -> None:
    """Unlock a user locked by too many failed logins."""

    async def unlock(registry: Registry) -> None:
        await registry.unlock_user(username)

    _run_admin(flags, unlock)
    click.echo(f"unlocked user {username}", err=True)


@user.command("delete")
@click.argument("username")
@_admin_options
def user_delete(username: str, **flags: Any) -> None:
    """Delete a user."""

    async def delete(registry: Registry) -> None:
        await registry.delete_user(username)

    _run_admin(flags, delete)
    click.echo(f"deleted user {username}", err=True)
