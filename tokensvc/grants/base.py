"""What every grant receives and how it is registered."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tokensvc.hashing import Hasher
from tokensvc.issuance import TokenIssuer
from tokensvc.models import Client, TokenResponse
from tokensvc.params import Params
from tokensvc.settings import Settings
from tokensvc.store.redis import RedisStore


@dataclass(frozen=True, slots=True)
class GrantContext:
    """One token request after client authentication."""

    client: Client
    params: Params
    issuer: TokenIssuer
    store: RedisStore
    hasher: Hasher
    settings: Settings


@dataclass(frozen=True, slots=True)
class Grant:
    """A grant type: its wire name, its handler, and whether public clients may use it."""

    grant_type: str
    handle: Callable[[GrantContext], Awaitable[TokenResponse]]
    allows_public: bool
