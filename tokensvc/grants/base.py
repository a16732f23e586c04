"""What every grant receives and how it is registered."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from tokensvc.hashing import Hasher
from tokensvc.issuance import TokenWriter
from tokensvc.models import Client, TokenResponse
from tokensvc.settings import Settings
from tokensvc.storage import GrantStorage


@dataclass(frozen=True, slots=True)
class GrantContext:
    """One token request after client authentication: its parameters and the parts a flow
    may use (the token writer for what grants share, the storage for what is the flow's own)."""

    client: Client
    params: Mapping[str, str]
    tokens: TokenWriter
    store: GrantStorage
    hasher: Hasher
    settings: Settings
    # RFC 9449: the thumbprint of the key of the request's checked DPoP proof, to bind the
    # tokens to; None for a bearer request.
    jkt: str | None = None


@dataclass(frozen=True, slots=True)
class Grant:
    """A grant type: its wire name, its handler, and whether public clients may use it."""

    grant_type: str
    handle: Callable[[GrantContext], Awaitable[TokenResponse]]
    allows_public: bool
