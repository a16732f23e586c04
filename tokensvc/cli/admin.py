"""`tokensvc client ...`, `tokensvc user ...` and `tokensvc keys rotate`: manage clients, users
and the JWT signing keys from the shell.

The admin commands talk to Redis directly, through the same Registry the admin API uses, so
the rules for clients and users are the same whichever way they are created. They find Redis
the way `serve` does: `--redis-url` / `TOKENSVC_REDIS_URL`, else the embedded server's socket
under the data dir, which they use but never start.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import IO, Any, TypeVar

import click
from redis.exceptions import RedisError

from tokensvc.cli.base import CliError, load_settings, main, masked, setting_options
from tokensvc.errors import OAuthError, StoreUnavailable
from tokensvc.fleet import Fleet, KeyMismatch
from tokensvc.grants import GRANT_TYPES
from tokensvc.hashing import Hasher
from tokensvc.keyring import Keyring
from tokensvc.models import AUTH_METHODS
from tokensvc.registry import INTROSPECTION, Registry, client_view, user_view
from tokensvc.settings import ACCESS_TOKEN_FORMATS, ENV_PREFIX, Settings
from tokensvc.signing import Signer
from tokensvc.store.embedded import running_url
from tokensvc.store.redis import open_store

T = TypeVar("T")
NO_REDIS_HINT = "start `tokensvc serve` first or pass --redis-url"


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


def _server_keys(cfg: Settings) -> tuple[str, ...]:
    """The deployment's server keys when this command knows them: set, or the embedded
    default's key file. Never a freshly generated key."""
    key_file = cfg.data_dir / "secret.key"
    if not cfg.secret_keys and key_file.is_file():
        return (key_file.read_text().strip(),)
    return cfg.secret_keys


def _cli_verifier(cfg: Settings) -> Callable[[str, str], str] | None:
    """Secret verifiers under the deployment's keys when this command knows them. None
    otherwise: the first worker that verifies the secret then writes the verifier."""
    if cfg.argon2_per_worker:
        return None
    keys = _server_keys(cfg)
    return Keyring(keys).secret_verifier if keys else None


def _cli_sealer(cfg: Settings) -> Callable[[str, str], str] | None:
    """Sealing of client_secret_jwt secrets, under the deployment's keys when known (else the
    Registry refuses that method and says why)."""
    keys = _server_keys(cfg)
    return Keyring(keys).seal_client_secret if keys else None


def _run_admin(flags: Mapping[str, Any], action: Callable[[Registry], Awaitable[T]]) -> T:
    """Run one registry action against the service's Redis; its refusals exit 1 with their text."""
    cfg = _admin_settings(flags)
    # Type narrowing: _admin_settings() ends the command when it finds no Redis.
    assert cfg.redis_url is not None  # noqa: S101
    url = cfg.redis_url

    async def run() -> T:
        store = open_store(url, cluster=cfg.redis_cluster, timeout=cfg.redis_timeout, pool_size=4)
        hasher = Hasher(cfg.password_time_cost, cfg.password_memory_cost, cfg.password_parallelism)
        try:
            return await action(Registry(store, hasher, _cli_verifier(cfg), _cli_sealer(cfg)))
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except OAuthError as exc:
        raise CliError(exc.description) from None
    except StoreUnavailable as exc:
        raise CliError(f"Redis at {masked(url)} is not reachable ({exc}); {NO_REDIS_HINT}") from None


def _print_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2))


_admin_options = setting_options(("redis_url", "data_dir", "redis_timeout"))


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
@click.option("--resource", "resources", multiple=True, metavar="URI",
              help="A resource (RFC 8707 absolute URI) the client may ask tokens for (repeatable); "
                   "none: any resource.")
@click.option("--introspection", type=click.Choice(INTROSPECTION), default="own", show_default=True,
              help="Whose tokens the client may introspect: its own, or all (a resource server).")
@click.option("--access-token-format", type=click.Choice(ACCESS_TOKEN_FORMATS),
              help="opaque or jwt (RFC 9068) access tokens. Default: TOKENSVC_ACCESS_TOKEN_FORMAT.")
@click.option("--auth-method", type=click.Choice([m for m in AUTH_METHODS if m != "none"]),
              help="How the client authenticates (default client_secret_basic); private_key_jwt "
                   "needs --jwks and gets no secret.")
@click.option("--jwks", "jwks_file", type=click.File("rb"), metavar="FILE",
              help="The client's public keys, a JWK Set file ('-': standard input).")
@click.option("--dpop-bound-access-tokens", is_flag=True,
              help="Every token request must carry a DPoP proof (RFC 9449 §5.2).")
@_admin_options
def client_create(name: str, redirect_uris: tuple[str, ...], scopes: tuple[str, ...],
                  grant_types: tuple[str, ...], website: str | None, public: bool,
                  resources: tuple[str, ...], introspection: str, access_token_format: str | None,
                  auth_method: str | None, jwks_file: IO[bytes] | None,
                  dpop_bound_access_tokens: bool, **flags: Any) -> None:
    """Create a client and print it as JSON, with its secret: the only time the secret is shown."""
    doc: dict[str, Any] = {"name": name, "redirect_uris": list(redirect_uris), "scopes": list(scopes),
                           "resources": list(resources), "introspection": introspection,
                           "access_token_format": access_token_format,
                           "dpop_bound_access_tokens": dpop_bound_access_tokens}
    if grant_types:
        doc["grant_types"] = list(grant_types)
    if website is not None:
        doc["website"] = website
    if public and auth_method is not None:
        raise CliError("--public and --auth-method exclude each other: a public client uses none.")
    if public:
        doc["token_endpoint_auth_method"] = "none"  # noqa: S105 -- a method name, not a password
    elif auth_method is not None:
        doc["token_endpoint_auth_method"] = auth_method
    if jwks_file is not None:
        try:
            doc["jwks"] = json.loads(jwks_file.read())
        except ValueError:
            raise CliError("--jwks: the file is not JSON (a JWK Set, {\"keys\": [...]}).") from None

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
@click.option("--auth-method", type=click.Choice(["client_secret_basic", "client_secret_post",
                                                  "client_secret_jwt"]),
              help="Switch the client to this secret method with the new secret (the way to "
                   "client_secret_jwt, or from private_key_jwt).")
@_admin_options
def client_rotate_secret(client_id: str, auth_method: str | None, **flags: Any) -> None:
    """Give a client a new secret (the old one stops working) and print it once, as JSON."""

    async def rotate(registry: Registry) -> dict[str, Any]:
        made, secret = await registry.rotate_secret(
            client_id, None if auth_method is None else {"token_endpoint_auth_method": auth_method})
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
        found, lockout = await registry.user(username)
        return user_view(found, lockout)

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


@main.group()
def keys() -> None:
    """The JWT signing keys, published at /.well-known/jwks.json."""


@keys.command("rotate")
@setting_options(("redis_url", "data_dir", "redis_timeout", "signing_alg",
                  "signing_key_publish_ahead"))
def keys_rotate(**flags: Any) -> None:
    """Make a new JWT signing key now: published at once, it signs after the publish-ahead
    (old tokens stay valid). Prints it as JSON; with a key already waiting to sign, that one.
    Needs the deployment's server keys (TOKENSVC_SECRET_KEYS, or the embedded default's key
    file): the new private key is kept in Redis sealed under the one the fleet signs with."""
    cfg = _admin_settings(flags)
    assert cfg.redis_url is not None  # noqa: S101 -- type narrowing: _admin_settings found one
    url, server_keys = cfg.redis_url, _server_keys(cfg)
    if not server_keys:
        raise CliError(f"no server key: set {ENV_PREFIX}SECRET_KEYS to the deployment's keys (the "
                       "new signing key is sealed under them)")

    async def rotate() -> dict[str, Any]:
        store = open_store(url, cluster=cfg.redis_cluster, timeout=cfg.redis_timeout, pool_size=2)
        keyring = Keyring(server_keys)
        try:
            # Seal under the server key the running fleet signs with (fleet.py), so every
            # instance can open it.
            fleet = Fleet(store.redis, keyring, cfg.fleet_heartbeat)
            members, _, recorded = await fleet.members()
            fleet.check(members, recorded)
            if members:
                keyring.signing = fleet.choose(members)
            elif recorded in keyring.fingerprints:
                keyring.signing = keyring.fingerprints.index(recorded)
            key, made = await Signer(store, keyring, cfg).rotate_now()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(type(exc).__name__) from exc
        finally:
            await store.close()
        return {"kid": key.kid, "alg": key.alg, "created": key.created, "activates": key.activates,
                "new": made}

    try:
        _print_json(asyncio.run(rotate()))
    except KeyMismatch as exc:
        raise CliError(str(exc)) from None
    except OAuthError as exc:
        raise CliError(exc.description) from None
    except StoreUnavailable as exc:
        raise CliError(f"Redis at {masked(url)} is not reachable ({exc}); {NO_REDIS_HINT}") from None
