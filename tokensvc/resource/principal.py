"""Who a request's access token speaks for, however it was checked."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class Principal:
    """The holder of a checked access token.

    `sub` is the user's name, or the client id for a client acting for itself
    (client_credentials); `username` is set only for a user. `aud` is the token's audience
    (RFC 8707 resources; the issuer for a token asked for none). `claims` is what the issuer
    said, read-only: the JWT's claims or the introspection answer. `checked_by` tells which.
    `jkt` is the thumbprint of the DPoP key the token is bound to (RFC 9449 `cnf.jkt`), whose
    proof came with the request; None for a bearer token.
    """

    sub: str
    client_id: str
    scopes: frozenset[str]
    aud: tuple[str, ...]
    exp: int
    username: str | None
    claims: Mapping[str, Any]
    checked_by: Literal["jwt", "introspection"]
    jkt: str | None = None

    def has(self, *scopes: str) -> bool:
        """Whether the token carries every one of `scopes`."""
        return self.scopes.issuperset(scopes)
