"""What the domain needs from storage, one Protocol per need (as fosite splits its storage
interfaces by flow). `store.RedisStore` provides them all; nothing outside `tokensvc/store/`
and the wiring (`services.py`, the CLI) names it, so a flow's module shows exactly which
operations it relies on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from tokensvc.models import Client, Lockout, User

# (key, record, TTL ms) of each token a write creates.
TokenWrite = tuple[str, bytes, int]


class Subscriber(Protocol):
    """What hears invalidations (the client directory, store/invalidation.py): it trusts its
    caches only between `subscribed` and `lost`, and drops what each message names."""

    @property
    def live(self) -> bool: ...

    def subscribed(self) -> None: ...

    def forget(self, name: str) -> None: ...

    def lost(self) -> None: ...


class TokenStorage(Protocol):
    """Tokens and grants (store/tokens.py): what the grants and the token writer use."""

    async def put_token(self, key: str, record: bytes, ttl_ms: int) -> None: ...

    async def issue(self, grant_id: str, tokens: Sequence[TokenWrite]) -> None: ...

    async def reuse_or_issue(self, grant_id: str, reuse_record: bytes, reuse_ttl_ms: int,
                             tokens: Sequence[TokenWrite]) -> tuple[bytes, int] | None: ...

    async def get_token(self, grant_id: str, token_digest: str) -> bytes | None: ...

    async def redeem(self, grant_id: str, code: str, new_access: str, new_refresh: str,
                     client_id: str, redirect_uri: str, verifier: str, verifier_s256: str,
                     access_ttl_ms: int, refresh_ttl_ms: int, with_refresh: bool,
                     resources: str = "", jkt: str = "", bind_refresh: bool = False) -> list[str]: ...

    async def rotate(self, grant_id: str, presented: str, new_access: str, new_refresh: str,
                     client_id: str, scope: str, access_ttl_ms: int, refresh_ttl_ms: int,
                     grace_ms: int, resources: str = "", jkt: str = "",
                     bind_refresh: bool = False) -> list[str]: ...

    async def link_user_grant(self, username: str, grant_id: str, ttl_ms: int) -> None: ...


class OnceStorage(Protocol):
    """What is accepted once across the whole deployment (store/sessions.py; SET NX PX, one
    round trip): console forms that reveal a secret, DPoP proofs (RFC 9449 §11.1), client
    assertions (RFC 7523 §3). Callers pass a digest that names its kind, e.g. of
    `dpop:<replay key>`, so the kinds never meet; True the first time, False after."""

    async def first_use(self, nonce_digest: str, ttl_ms: int) -> bool: ...


class LoginStorage(Protocol):
    """A user's password check with its lockout (store/users.py). `limit` is the client in
    use's; the lock it sets holds for every client."""

    async def login_attempt(self, username: str, limit: int,
                            hold_ms: int) -> tuple[User | None, int]: ...

    async def login_result(self, username: str, ok: bool, lockout_ms: int, limit: int) -> int: ...


class GrantStorage(TokenStorage, LoginStorage, Protocol):
    """Everything a grant's flow may touch."""


class ClientStorage(Protocol):
    """The client directory's reads, verifier write, throttle and invalidations."""

    async def get_client(self, client_id: str) -> Client | None: ...

    async def add_secret_verifier(self, client: Client, verifier: str) -> Client | None: ...

    async def client_auth_attempt(self, client_id: str, limit: int,
                                  window_ms: int) -> tuple[int, int]: ...

    async def client_auth_refund(self, client_id: str) -> None: ...

    async def follow_invalidations(self, url: str, timeout: float,
                                   subscriber: Subscriber) -> None: ...


class SealedSecretStorage(Protocol):
    """The client_secret_jwt secrets kept sealed, for sealing them anew (reseal.py)."""

    async def sealed_sweep_state(self) -> tuple[int, str | None]: ...

    async def sealed_secret_clients(self) -> list[Client]: ...

    async def mark_sealed_sweep(self, stamp: str) -> None: ...

    async def reseal_client_secret(self, client_id: str, sealed: str, resealed: str) -> bool: ...


class RegistryStorage(Protocol):
    """Creating, changing and removing clients and users (the admin API, console and CLI)."""

    async def get_client(self, client_id: str) -> Client | None: ...

    async def put_client(self, client: Client, *, new: bool,
                         previous: Client | None = None) -> bool: ...

    async def delete_client(self, client_id: str) -> bool: ...

    async def list_clients(self, offset: int, limit: int) -> tuple[list[Client], int]: ...

    async def get_user(self, username: str) -> tuple[User | None, Lockout]: ...

    async def put_user(self, user: User, *, new: bool) -> bool: ...

    async def end_lockout(self, username: str) -> None: ...

    async def delete_user(self, username: str) -> bool: ...


class SigningKeyStorage(Protocol):
    """The deployment's JWT signing keys (store/signing.py), for tokensvc/signing.py."""

    async def signing_keys(self) -> list[bytes | str]: ...

    async def add_signing_key(self, newest_kid: str, record: bytes, ahead_ms: int,
                              not_before_ms: int, margin_ms: int) -> int | None: ...

    async def cover_signing_key(self, kid: str, lifetime_ms: int, margin_ms: int) -> bool: ...

    async def prune_signing_keys(self) -> int: ...

    async def reseal_signing_key(self, kid: str, sealed: str, resealed: str) -> bool: ...


class UsageStorage(Protocol):
    async def record_usage(self, issued: Mapping[str, int], failed: Mapping[str, int],
                           now_ms: int) -> None: ...
