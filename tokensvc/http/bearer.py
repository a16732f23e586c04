"""Bearer tokens (RFC 6750), DPoP-bound tokens (RFC 9449 §7) and what a live token says about
who holds it, in one module.

Every HTTP module that reads `Authorization: Bearer ...` (or `DPoP ...`) or describes a token's
principal goes through here: the token and user-info endpoints (`POST /login`,
`GET /oauth/userinfo`), introspection (RFC 7662), finAPI-style revocation, and the admin key's
check, so the schemes' parsing, the 401's wording and the principal's claims cannot drift apart.

A token bound to a DPoP key (its record's `jkt`) passes only with the DPoP scheme and a proof
signed by that key, for this request (method and public URL), this token (`ath`), and not
seen before anywhere in the deployment (its `jti`, once, in Redis). The Bearer way pays for
this with one attribute check on the record it reads anyway.
"""

from __future__ import annotations

import hmac

from starlette.requests import Request

from tokensvc import dpop, resources
from tokensvc.errors import (
    DPOP_CHALLENGE,
    DPoPNonceRequired,
    DPoPProofRefused,
    DPoPTokenRefused,
    InvalidToken,
)
from tokensvc.models import TokenRecord
from tokensvc.proofs import HEADER as DPOP_HEADER, accept_once, check
from tokensvc.services import Services
from tokensvc.storage import OnceStorage
from tokensvc.store import records
from tokensvc.tokens import ACCESS, CODE, Parsed

INVALID = "The access token is invalid, expired or revoked."
MISSING = "An access token is required (Authorization: Bearer ... or DPoP ...)."
# RFC 9449 §7.2: "such a protected resource MUST reject a DPoP-bound access token received as
# a bearer token".
BOUND = "The access token is bound to a DPoP key: present it with Authorization: DPoP and a proof."
# RFC 9449 §7.1: the key of the proof must match "the public key to which the access token is
# bound"; a bearer token is bound to none, so the DPoP scheme cannot carry it.
NOT_BOUND = "The access token is not bound to a DPoP key: present it with Authorization: Bearer."
OTHER_KEY = "The DPoP proof's key is not the one the access token is bound to."
REPLAYED = "The DPoP proof was already used (its jti is accepted once)."


def bearer_token(request: Request) -> str | None:
    """RFC 6750 §2.1: the token from `Authorization: Bearer ...`, if that is what was sent."""
    header = request.headers.get("authorization")
    if header is None or header[:7].lower() != "bearer ":
        return None
    return header[7:].strip() or None


def dpop_token(request: Request) -> str | None:
    """RFC 9449 §7.1: the token from `Authorization: DPoP ...`, if that is what was sent."""
    header = request.headers.get("authorization")
    if header is None or header[:5].lower() != "dpop ":
        return None
    return header[5:].strip() or None


class DPoPPresentations:
    """Checks a token presented with the DPoP scheme, for one deployment: its public URL (the
    issuer's, which proofs name in `htu`), its once-only store and, with TOKENSVC_DPOP_NONCE,
    its nonces."""

    def __init__(self, once: OnceStorage, issuer_url: str, nonces: dpop.Nonces | None) -> None:
        self.once = once
        self.base = issuer_url.rstrip("/")
        self.nonces = nonces

    async def record(self, request: Request, svc: Services, token: str) -> TokenRecord:
        """The live access token `token`, bound to the key of the request's proof; the proof is
        spent. DPoPRefused (401, DPoP challenge) otherwise."""
        # The URL as the token endpoint reads it: the issuer's, which clients are given.
        proof = check(request.headers.getlist(DPOP_HEADER), request.method,
                      self.base + request.scope["path"], self.nonces, token,
                      refused=DPoPProofRefused, nonce_required=DPoPNonceRequired)
        record = await live_record(svc, token, ACCESS)
        if record is None:
            raise DPoPTokenRefused(INVALID)
        if record.jkt is None:
            raise DPoPTokenRefused(NOT_BOUND)
        if not hmac.compare_digest(record.jkt, proof.jkt):
            raise DPoPTokenRefused(OTHER_KEY)
        # Last, so a request refused above spends nothing; once per deployment (SET NX PX), so a
        # proof replayed to another instance is refused as on this one.
        if not await accept_once(self.once, proof):
            raise DPoPProofRefused(REPLAYED)
        return record


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


async def presented_record(request: Request, svc: Services,
                           presentations: DPoPPresentations) -> TokenRecord | None:
    """The live access token the request presents with the Bearer or the DPoP scheme; None when
    it presents none. RFC 6750 §3.1 `invalid_token` for a token that is expired, revoked,
    unknown, not an access token, or bound to a key and presented as a bearer token; RFC 9449
    §7.1's refusals for a DPoP presentation that does not hold."""
    token = bearer_token(request)
    if token is not None:
        record = await live_record(svc, token, ACCESS)
        if record is None:
            raise InvalidToken(INVALID)
        if record.jkt is not None:
            raise InvalidToken(BOUND)
        return record
    token = dpop_token(request)
    if token is None:
        return None
    return await presentations.record(request, svc, token)


async def access_token(request: Request, svc: Services, presentations: DPoPPresentations) -> TokenRecord:
    """The live access token the request presents (`presented_record`); a missing one is
    `invalid_token` too."""
    record = await presented_record(request, svc, presentations)
    if record is None:
        # RFC 9449 §7.2: an endpoint that takes both schemes offers both.
        raise InvalidToken(MISSING, also=DPOP_CHALLENGE)
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
