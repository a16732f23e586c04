"""Client and user administration, shared by the admin API and the CLI.

Input arrives as loose JSON (admin API, CLI flags); it is validated here into frozen models.
Client secrets are generated here, returned once, and only their argon2id hash is stored (and,
for a client_secret_jwt client, whose assertions the server checks with the secret itself, the
secret sealed under a server subkey: `Keyring.seal_client_secret`).

A private_key_jwt client has `jwks` and no secret at all; authmethods.py says which switches
of method are edits and which need a secret rotation naming the method.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from tokensvc import resources
from tokensvc.authmethods import SECRETLESS, auth_method, switch
from tokensvc.errors import Conflict, InvalidRequest, NotFound
from tokensvc.grants import GRANT_TYPES
from tokensvc.hashing import Hasher
from tokensvc.jwkset import check_jwks
from tokensvc.models import CLIENT_SECRET_JWT, PRIVATE_KEY_JWT, Client, Lockout, User
from tokensvc.scopes import is_scope_token
from tokensvc.settings import ACCESS_TOKEN_FORMATS, MAX_TTL
from tokensvc.storage import RegistryStorage

SECRET_PREFIX = "tsv_cs_"  # noqa: S105 -- the public prefix of generated secrets, not a secret
_CONFIG_INTS = ("access_token_ttl", "refresh_token_ttl", "max_user_login_attempts")
# Ten years: a lifetime must fit Redis' PX and the 64-bit `exp` of a token record.
_EDITABLE = ("name", "redirect_uris", "scopes", "grant_types", "website",
             "reuse_tokens", "require_verified_users", *_CONFIG_INTS, "introspection", "resources",
             "access_token_format", "dpop_bound_access_tokens", "jwks", "token_endpoint_auth_method")
# RFC 7662 §4: whose tokens a client may introspect, its own or (a resource server) anyone's.
INTROSPECTION = ("own", "all")
_CREATABLE = _EDITABLE
_USER_FIELDS = ("username", "password", "verified")


def _known_fields(doc: Mapping[str, Any], known: tuple[str, ...], verb: str) -> None:
    """A misspelt field (`grant_type`, `scope`, `redirect_uri`) must not silently become the
    default: name it, and what is accepted."""
    unknown = sorted(set(doc) - set(known))
    if unknown:
        raise InvalidRequest(f"Cannot {verb}: {', '.join(u[:64] for u in unknown[:5])}.")


def new_client_id() -> str:
    """128 random bits, base64url; never starting with '-', which a command line would read as
    an option (`tokensvc client show -x...`)."""
    while True:
        client_id = secrets.token_urlsafe(16)
        if not client_id.startswith("-"):
            return client_id


def new_secret() -> str:
    """A client secret: 256 random bits, prefixed so secret scanners recognise it."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def _text(doc: Mapping[str, Any], name: str, *, required: bool = False,
          limit: int = 200) -> str | None:
    value = doc.get(name)
    if value is None:
        if required:
            raise InvalidRequest(f"'{name}' is required.")
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise InvalidRequest(f"'{name}' must be a non-empty string of at most {limit} characters.")
    if any(ord(ch) < 32 for ch in value):
        raise InvalidRequest(f"'{name}' must not contain control characters.")
    return value.strip()


def _strings(doc: Mapping[str, Any], name: str) -> tuple[str, ...] | None:
    value = doc.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"'{name}' must be a list of strings.")
    return tuple(dict.fromkeys(value))


def _redirect_uri(uri: str) -> str:
    # RFC 6749 §3.1.2: an absolute URI without a fragment; compared exactly later.
    parts = urlsplit(uri)
    if not parts.scheme or not (parts.netloc or parts.scheme not in ("http", "https")):
        raise InvalidRequest(f"redirect URI '{uri[:100]}' is not an absolute URI.")
    if parts.fragment or "#" in uri:
        raise InvalidRequest(f"redirect URI '{uri[:100]}' must not have a fragment.")
    if parts.scheme == "http" and parts.hostname not in ("localhost", "127.0.0.1", "::1"):
        raise InvalidRequest("http redirect URIs are allowed for loopback hosts only; use https.")
    # RFC 8252 §7.1: a native app's private-use scheme is named after a domain; this also
    # keeps out javascript:, data: and the like, which a browser would run, not follow.
    if parts.scheme not in ("http", "https") and "." not in parts.scheme:
        raise InvalidRequest(
            f"redirect URI '{uri[:100]}' needs https, http on a loopback host, or a private-use "
            "scheme named after a domain, such as com.example.app:/cb (RFC 8252 §7.1).")
    # A space or control character has no place in a URI and would end up in a Location header.
    if any(ord(ch) <= 32 or ord(ch) == 127 for ch in uri):
        raise InvalidRequest(f"redirect URI {uri[:100]!r} contains a space or control character.")
    return uri


def _website(doc: Mapping[str, Any]) -> str | None:
    site = _text(doc, "website", limit=2000)
    if site is not None and urlsplit(site).scheme not in ("http", "https"):
        raise InvalidRequest("'website' must be an http(s) URL.")
    return site


def _resources(doc: Mapping[str, Any]) -> tuple[str, ...]:
    """RFC 8707 resource indicators a client may ask for: absolute URIs without a fragment."""
    uris = _strings(doc, "resources") or ()
    if len(uris) > resources.MAX_RESOURCES:
        raise InvalidRequest(f"'resources' may name at most {resources.MAX_RESOURCES} resources.")
    for uri in uris:
        why = resources.problem(uri)
        if why is not None:
            raise InvalidRequest(f"'resources': {uri[:100]!r} {why} (RFC 8707 §2).")
    return resources.canonical(uris)


def _config(doc: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "introspection" in doc:
        if doc["introspection"] not in INTROSPECTION:
            raise InvalidRequest("'introspection' must be \"own\" (the client's own tokens) or "
                                 "\"all\" (a resource server: every client's tokens).")
        out["introspection"] = doc["introspection"]
    if "resources" in doc:
        out["resources"] = _resources(doc)
    if "access_token_format" in doc:
        if doc["access_token_format"] is not None and doc["access_token_format"] not in ACCESS_TOKEN_FORMATS:
            raise InvalidRequest("'access_token_format' must be \"opaque\", \"jwt\" (RFC 9068) or "
                                 "null (the global default).")
        out["access_token_format"] = doc["access_token_format"]
    for name in _CONFIG_INTS:
        if name in doc:
            value = doc[name]
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise InvalidRequest(f"'{name}' must be a positive integer or null.")
            if name.endswith("_ttl") and value is not None and value > MAX_TTL:
                raise InvalidRequest(f"'{name}' must be at most {MAX_TTL} seconds (ten years).")
            out[name] = value
    if "reuse_tokens" in doc:
        if doc["reuse_tokens"] is not None and not isinstance(doc["reuse_tokens"], bool):
            raise InvalidRequest("'reuse_tokens' must be true, false or null (the global default).")
        out["reuse_tokens"] = doc["reuse_tokens"]
    if "jwks" in doc:
        out["jwks"] = None if doc["jwks"] is None else check_jwks(doc["jwks"])
    if "require_verified_users" in doc:
        if not isinstance(doc["require_verified_users"], bool):
            raise InvalidRequest("'require_verified_users' must be true or false.")
        out["require_verified_users"] = doc["require_verified_users"]
    if "dpop_bound_access_tokens" in doc:
        if not isinstance(doc["dpop_bound_access_tokens"], bool):
            raise InvalidRequest("'dpop_bound_access_tokens' must be true or false (RFC 9449 §5.2).")
        out["dpop_bound_access_tokens"] = doc["dpop_bound_access_tokens"]
    return out


def _check_client(client: Client) -> Client:
    for g in client.grant_types:
        if g not in GRANT_TYPES:
            raise InvalidRequest(f"grant type '{g[:64]}' is not supported; use {', '.join(GRANT_TYPES)}.")
    if not client.grant_types:
        raise InvalidRequest("a client needs at least one grant type.")
    if "authorization_code" in client.grant_types and not client.redirect_uris:
        raise InvalidRequest("the authorization_code grant needs at least one redirect URI.")
    if client.is_public and "client_credentials" in client.grant_types:
        raise InvalidRequest("a public client cannot use client_credentials (RFC 6749 §4.4).")
    for s in client.scopes:
        if not is_scope_token(s):
            raise InvalidRequest(f"scope '{s[:64]}' is not a valid scope token (RFC 6749 §3.3).")
    for uri in client.redirect_uris:
        _redirect_uri(uri)
    if client.token_endpoint_auth_method == PRIVATE_KEY_JWT and not client.jwks:
        raise InvalidRequest("private_key_jwt needs 'jwks': the client's public keys, which its "
                             "assertions are verified with.")
    return client


def client_view(client: Client, secret: str | None = None) -> dict[str, Any]:
    """The client as the admin API shows it; the secret only when just generated."""
    view: dict[str, Any] = {"client_id": client.client_id}
    if secret is not None:
        view["client_secret"] = secret
    view.update({k: v for k, v in dataclasses.asdict(client).items()
                 if k not in ("client_id", "secret_hash", "secret_verifier", "secret_sealed")})
    for name in ("grant_types", "scopes", "redirect_uris", "resources"):
        view[name] = list(view[name])
    return view


class Registry:
    """Creates, edits and revokes clients and users."""

    def __init__(self, store: RegistryStorage, hasher: Hasher,
                 verifier: Callable[[str, str], str] | None = None,
                 sealer: Callable[[str, str], str] | None = None) -> None:
        self.store = store
        self.hasher = hasher
        # Keyring.secret_verifier, unless the deployment keeps argon2 per worker: a new secret
        # is known here, so its verifier is written with its hash and no worker ever runs
        # argon2 for it.
        self.verifier = verifier
        # Keyring.seal_client_secret when the server keys are known (always in the service):
        # what keeps a client_secret_jwt client's secret.
        self.sealer = sealer

    async def _secret_fields(self, client_id: str, secret: str, method: str) -> dict[str, Any]:
        sealed = None
        if method == CLIENT_SECRET_JWT:
            if self.sealer is None:
                raise InvalidRequest("client_secret_jwt keeps the secret sealed under the server "
                                     "key, which is not known here: set TOKENSVC_SECRET_KEYS.")
            sealed = self.sealer(client_id, secret)
        return {"secret_hash": await self.hasher.hash(secret),
                "secret_verifier": None if self.verifier is None else self.verifier(client_id, secret),
                "secret_sealed": sealed}

    async def create_client(self, doc: Mapping[str, Any]) -> tuple[Client, str | None]:
        """A new client and its secret (None for public clients), which is never shown again."""
        _known_fields(doc, _CREATABLE, "set")
        method = auth_method(doc, "client_secret_basic")
        public = method == "none"
        default_grants = ("password", "refresh_token") if public else (
            "client_credentials", "password", "refresh_token")
        secret = None if method in SECRETLESS else new_secret()
        client_id = new_client_id()
        client = _check_client(Client(
            client_id=client_id,
            name=_text(doc, "name", required=True) or "",
            secret_hash=None,
            token_endpoint_auth_method=method,
            grant_types=_strings(doc, "grant_types") or default_grants,
            scopes=_strings(doc, "scopes") or (),
            redirect_uris=_strings(doc, "redirect_uris") or (),
            website=_website(doc),
            created_at=int(time.time()),
            **_config(doc),
        ))
        if secret is not None:
            client = dataclasses.replace(client, **await self._secret_fields(client_id, secret, method))
        if not await self.store.put_client(client, new=True):
            raise Conflict("A client with that id already exists.")
        return client, secret

    async def client(self, client_id: str) -> Client:
        client = await self.store.get_client(client_id)
        if client is None:
            raise NotFound("No such client.")
        return client

    async def update_client(self, client_id: str, doc: Mapping[str, Any]) -> Client:
        _known_fields(doc, _EDITABLE, "change")
        current = await self.client(client_id)
        changes: dict[str, Any] = _config(doc)
        if "name" in doc:
            changes["name"] = _text(doc, "name", required=True)
        if "website" in doc:
            changes["website"] = _website(doc)
        for name in ("redirect_uris", "scopes", "grant_types"):
            if name in doc:
                changes[name] = _strings(doc, name) or ()
        method = auth_method(doc, current.token_endpoint_auth_method)
        if method != current.token_endpoint_auth_method:
            changes.update(switch(current, method))
        client = _check_client(dataclasses.replace(current, **changes))
        if not await self.store.put_client(client, new=False, previous=current):
            raise NotFound("No such client.")
        return client

    async def rotate_secret(self, client_id: str,
                            doc: Mapping[str, Any] | None = None) -> tuple[Client, str]:
        """A new secret, shown once; with `token_endpoint_auth_method` in `doc`, the client
        switches to that secret method in the same write (the only way to client_secret_jwt,
        or from private_key_jwt)."""
        current = await self.client(client_id)
        doc = doc or {}
        _known_fields(doc, ("token_endpoint_auth_method",), "set on a secret rotation")
        method = auth_method(doc, current.token_endpoint_auth_method)
        if current.is_public or method == "none":
            raise InvalidRequest("A public client has no secret.")
        if method == PRIVATE_KEY_JWT:
            raise InvalidRequest("A private_key_jwt client has no secret. To switch it to a secret, "
                                 "name the method: {\"token_endpoint_auth_method\": "
                                 "\"client_secret_basic\"} (or client_secret_post, client_secret_jwt).")
        secret = new_secret()
        client = _check_client(dataclasses.replace(
            current, token_endpoint_auth_method=method,
            **await self._secret_fields(client_id, secret, method)))
        if not await self.store.put_client(client, new=False):
            raise NotFound("No such client.")
        return client, secret

    async def revoke_client(self, client_id: str) -> None:
        if not await self.store.delete_client(client_id):
            raise NotFound("No such client.")

    # -- users --------------------------------------------------------------------------

    async def _password(self, doc: Mapping[str, Any]) -> str:
        password = doc.get("password")
        if not isinstance(password, str) or not 8 <= len(password) <= 1024:
            raise InvalidRequest("'password' must be a string of 8 to 1024 characters.")
        return await self.hasher.hash(password)

    async def create_user(self, doc: Mapping[str, Any]) -> User:
        _known_fields(doc, _USER_FIELDS, "set")
        username = _text(doc, "username", required=True) or ""
        verified = doc.get("verified", False)
        if not isinstance(verified, bool):
            raise InvalidRequest("'verified' must be true or false.")
        user = User(username, await self._password(doc), verified, int(time.time()))
        if not await self.store.put_user(user, new=True):
            raise Conflict("A user with that username already exists.")
        return user

    async def user(self, username: str) -> tuple[User, Lockout]:
        user, lockout = await self.store.get_user(username)
        if user is None:
            raise NotFound("No such user.")
        return user, lockout

    async def update_user(self, username: str, doc: Mapping[str, Any]) -> User:
        _known_fields(doc, ("verified", "password"), "change")
        user, _ = await self.user(username)
        changes: dict[str, Any] = {}
        if "verified" in doc:
            if not isinstance(doc["verified"], bool):
                raise InvalidRequest("'verified' must be true or false.")
            changes["verified"] = doc["verified"]
        if "password" in doc:
            changes["password_hash"] = await self._password(doc)
        user = dataclasses.replace(user, **changes)
        if not await self.store.put_user(user, new=False):
            raise NotFound("No such user.")
        return user

    async def unlock_user(self, username: str) -> None:
        await self.user(username)
        await self.store.end_lockout(username)

    async def delete_user(self, username: str) -> None:
        if not await self.store.delete_user(username):
            raise NotFound("No such user.")


def user_view(user: User, lockout: Lockout | None = None) -> dict[str, Any]:
    """The user as the admin API and CLI show it: `locked` is the lock every client honours
    (whichever client's limit set it), `failed_logins` the failures through all clients."""
    lockout = lockout or Lockout()
    return {"username": user.username, "verified": user.verified, "created_at": user.created_at,
            "failed_logins": lockout.failures, "locked": lockout.locked}
