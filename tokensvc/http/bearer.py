"""Bearer tokens (RFC 6750) and what a live token says about who holds it, in one module.

Every HTTP module that reads `Authorization: Bearer ...` or describes a token's principal goes
through here: the token and user-info endpoints (`POST /login`, `GET /oauth/userinfo`),
introspection (RFC 7662), finAPI-style revocation, and the admin key's check, so the scheme's
parsing, the 401's wording and the principal's claims cannot drift apart.
"""

from __future__ import annotations

import hmac

from starlette.requests import Request

from tokensvc import resources
from tokensvc.errors import InvalidToken
from tokensvc.models import TokenRecord
from tokensvc.services import Services
from tokensvc.store import records
from tokensvc.tokens import ACCESS, CODE, Parsed


def bearer_token(request: Request) -> str | None:
    """RFC 6750 §2.1: the token from `Authorization: Bearer ...`, if that is what was sent."""
    header = request.headers.get("authorization")
    if header is None or header[:7].lower() != "bearer ":
        return None
    return header[7:].strip() or None


def parse_token(svc: Services, token: str, kind: str | None = None) -> Parsed | None:
    """Where a presented token's record is: an opaque token whose tag checks out, or a JWT
    access token this deployment signed (RFC 9068; signing.py), by its jti. An opaque token
    costs nothing more than before."""
    parsed = svc.codec.parse(token, kind)
    if parsed is None and kind in (None, ACCESS):
        parsed = svc.signer.parse(token)
    return parsed


async def live_record(svc: Services, token: str, kind: str | None = None) -> TokenRecord | None:
    """The record of a live token: minted here, stored, not rotated, its client not revoked."""
    parsed = parse_token(svc, token, kind)
    if parsed is None or parsed.kind == CODE:
        return None
    record = records.decode_token(await svc.store.get_token(parsed.grant_id, parsed.digest))
    if record is None or record.rotated_at is not None:
        return None
    # Revoking a client ends its tokens at once: they die with the client record.
    if await svc.clients.get(record.client_id) is None:
        return None
    return record


async def access_token(request: Request, svc: Services) -> TokenRecord:
    """The live access token the request presents; RFC 6750 §3.1 `invalid_token` otherwise
    (missing, expired, revoked, unknown, or not an access token)."""
    token = bearer_token(request)
    if token is None:
        raise InvalidToken("An access token is required (Authorization: Bearer ...).")
    record = await live_record(svc, token, ACCESS)
    if record is None:
        raise InvalidToken("The access token is invalid, expired or revoked.")
    return record


def claims(record: TokenRecord) -> dict[str, object]:
    """Who a token speaks for, as introspection and the principal endpoints both say it: the
    user, or the client itself for client_credentials; times in epoch seconds."""
    out: dict[str, object] = {
        "sub": record.username or record.client_id,
        "client_id": record.client_id,
        "iat": record.issued_at // 1000,
        "exp": record.expires_at // 1000,
    }
    if record.username is not None:
        out["username"] = record.username
    return out


def introspection(record: TokenRecord | None, issuer_url: str) -> dict[str, object]:
    """RFC 7662 §2.2: anything unknown, expired, rotated or revoked is just `active: false`."""
    if record is None:
        return {"active": False}
    body: dict[str, object] = {"active": True}
    if record.scope:  # optional; "" would read as one empty scope
        body["scope"] = record.scope
    if record.kind != ACCESS:
        kind = "refresh_token"
    else:
        kind = "Bearer" if record.jkt is None else "DPoP"  # RFC 9449 §6.2
    body.update({"token_type": kind, "iss": issuer_url, **claims(record)})
    if record.audience is not None:
        body["aud"] = resources.claim(record.audience)  # RFC 8707 §2: the requested resources
    if record.jkt is not None:
        # RFC 9449 §6.2: the key the token is bound to (a bound refresh token's too).
        body["cnf"] = {"jkt": record.jkt}
    return body


def principal(record: TokenRecord) -> dict[str, object]:
    """OmniFund's `POST /login` and `GET /oauth/userinfo`: who holds the token, user or client."""
    return {"type": "user" if record.username is not None else "client",
            "scope": record.scope or None, **claims(record)}


class AdminKey:
    """The admin API's bearer key, compared in constant time."""

    def __init__(self, key: str) -> None:
        self._key = key.encode("utf-8")

    def check(self, request: Request) -> None:
        token = bearer_token(request)
        if token is None or not hmac.compare_digest(token.encode("utf-8"), self._key):
            raise InvalidToken("The admin key is missing or wrong.")
