"""RFC 9068 JWT access tokens: their claims, their `jti`, and how one is told from an opaque token.

A JWT access token is recorded in Redis exactly like an opaque one: under
`keys.token(grant id, digest(jti))` in its grant's slot. The `jti` reads
`<grant id>.<24 random base64url characters>` (144 bits), so the grant, and with it the
slot of every key a revocation or rotation touches, is known from the token alone. Only a
verified JWT's `jti` is ever looked up: a bare `jti` presented as a token is refused, since it
is neither an opaque token (no prefix, no tag) nor a JWT.
"""

from __future__ import annotations

import secrets

from tokensvc.tokens import GRANT_ID_BYTES

TYP = "at+jwt"  # RFC 9068 §2.1
_GRANT_ID_LEN = GRANT_ID_BYTES * 4 // 3
# Far beyond any token this service signs (a few hundred bytes even with 20 audiences of
# 1,000 characters is ~21 KB; scope and names are bounded too): a larger one is not ours,
# and is not worth a base64 decode.
MAX_LENGTH = 32 * 1024


def new_jti(grant_id: str) -> str:
    return f"{grant_id}.{secrets.token_urlsafe(18)}"


def grant_of_jti(jti: str) -> str | None:
    """The grant id a jti names, or None when it is not of this service's shape."""
    grant_id, dot, rest = jti.partition(".")
    if not dot or len(grant_id) != _GRANT_ID_LEN or not rest:
        return None
    return grant_id


def looks_like_jwt(token: str) -> bool:
    """Three dot-separated parts (RFC 7515 §7.1 compact serialization), not too long: worth
    verifying. Cheap, so an opaque or garbage token costs nothing more."""
    return len(token) <= MAX_LENGTH and token.count(".") == 2


def access_claims(issuer: str, client_id: str, username: str | None, scope: str,
                  audience: str | None, issued_ms: int, ttl_ms: int, jti: str,
                  jkt: str | None = None) -> dict[str, object]:
    """RFC 9068 §2.2: `sub` is the user, or the client for client_credentials; `aud` the RFC
    8707 resources (a list) when the token has an audience, else the issuer itself; `scope`
    only when not empty; RFC 9449 §6.1 `cnf.jkt` when the token is DPoP-bound. Times in epoch
    seconds, as the record's (epoch ms) cut down."""
    claims: dict[str, object] = {
        "iss": issuer,
        "sub": username or client_id,
        "aud": audience.split(" ") if audience else issuer,
        "exp": (issued_ms + ttl_ms) // 1000,
        "iat": issued_ms // 1000,
        "jti": jti,
        "client_id": client_id,
    }
    if scope:
        claims["scope"] = scope
    if jkt is not None:
        claims["cnf"] = {"jkt": jkt}
    return claims
