"""Opaque access tokens, checked by RFC 7662 introspection with a short, bounded cache.

The API authenticates as a client of its own; at tokensvc that client needs
`"introspection": "all"` (RFC 7662 §4), or it sees every other client's token as inactive.

An answer is kept for at most `ttl` seconds and never past the token's `exp`, so a revoked
token is refused at most `ttl` seconds after its revocation. Refusals are kept for the
shorter `negative_ttl` and in an LRU of their own: a flood of made-up tokens cannot push
live tokens out of the cache. Both are bounded to `size` entries, keyed by the token's
SHA-256 rather than the token. A `ttl` (or `negative_ttl`) of 0 keeps no answer (or refusal):
every check asks the issuer. Concurrent checks of one token share one request.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from tokensvc.lru import LRU
from tokensvc.resource.errors import Rejected
from tokensvc.resource.fetch import Fetcher, basic_auth
from tokensvc.resource.jwks import bound_to
from tokensvc.resource.principal import Principal

INACTIVE = "The access token is invalid, expired or revoked."


class Introspector:
    """Principals of opaque tokens, from the issuer's introspection endpoint."""

    def __init__(self, fetcher: Fetcher, endpoint: str, client_id: str, client_secret: str, *,
                 issuer: str, audience: str, leeway: float, ttl: float, negative_ttl: float,
                 size: int) -> None:
        self.fetcher = fetcher
        self.endpoint = endpoint
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.requests = 0
        self._authorization = basic_auth(client_id, client_secret)
        self._active: LRU[bytes, tuple[float, Principal]] = LRU(size)
        self._refused: LRU[bytes, tuple[float, str]] = LRU(size)
        self._inflight: dict[bytes, asyncio.Task[Principal]] = {}

    @property
    def cached(self) -> tuple[int, int]:
        """How many answers are kept: (active, refused)."""
        return len(self._active), len(self._refused)

    async def principal(self, token: str) -> Principal:
        digest = hashlib.sha256(token.encode("utf-8")).digest()
        now = time.monotonic()
        kept = self._active.get(digest)
        if kept is not None:
            if now < kept[0]:
                return kept[1]
            self._active.pop(digest)
        refused = self._refused.get(digest)
        if refused is not None:
            if now < refused[0]:
                raise Rejected(refused[1])
            self._refused.pop(digest)
        task = self._inflight.get(digest)
        if task is None:
            task = asyncio.ensure_future(self._ask(token, digest))
            self._inflight[digest] = task
            task.add_done_callback(lambda done: self._finished(digest, done))
        # Shielded: a caller that goes away does not cancel the answer the others wait for.
        return await asyncio.shield(task)

    def _finished(self, digest: bytes, task: asyncio.Task[Principal]) -> None:
        self._inflight.pop(digest, None)
        if not task.cancelled():
            task.exception()  # retrieved here, so one that nobody awaited is not reported

    async def _ask(self, token: str, digest: bytes) -> Principal:
        self.requests += 1
        doc = await self.fetcher.post_form(
            self.endpoint, {"token": token, "token_type_hint": "access_token"},
            self._authorization, "introspection")
        try:
            found = self._read(doc)
        except Rejected as why:
            if self.negative_ttl > 0:
                self._refused.put(digest, (time.monotonic() + self.negative_ttl, str(why)))
            raise
        keep = min(self.ttl, found.exp - time.time())
        if keep > 0:
            self._active.put(digest, (time.monotonic() + keep, found))
        return found

    def _read(self, doc: Mapping[str, Any]) -> Principal:
        """The principal of an introspection answer, after the checks a JWT gets too."""
        if doc.get("active") is not True:
            raise Rejected(INACTIVE)
        token_type = doc.get("token_type")
        kind = None if token_type is None else str(token_type).lower()
        if kind not in (None, "bearer", "dpop"):
            # A refresh token is active too (RFC 7662 §2.2); it never opens an API.
            raise Rejected("The token is not an access token.")
        jkt = bound_to(doc)
        if kind is not None and (kind == "dpop") != (jkt is not None):
            # RFC 9449 §6.2: a DPoP-bound token is `token_type: DPoP` with its `cnf.jkt`.
            raise Rejected("The introspection answer's token_type and cnf disagree.")
        if doc.get("iss", self.issuer) != self.issuer:
            raise Rejected("The access token is from another issuer (iss).")
        aud = _audience(doc.get("aud"), self.issuer)
        if self.audience not in aud:
            raise Rejected("The access token is not for this API (aud).")
        exp = doc.get("exp")
        if not isinstance(exp, int) or isinstance(exp, bool):
            raise Rejected("The access token has no expiry.")
        if exp <= time.time() - self.leeway:
            raise Rejected("The access token expired.")
        sub, client_id, scope = doc.get("sub"), doc.get("client_id"), doc.get("scope", "")
        username = doc.get("username")
        if not isinstance(client_id, str) or not isinstance(scope, str):
            raise Rejected("The introspection answer lacks the client or the scope.")
        return Principal(sub=sub if isinstance(sub, str) else client_id, client_id=client_id,
                         scopes=frozenset(scope.split()), aud=aud, exp=exp,
                         username=username if isinstance(username, str) else None,
                         claims=MappingProxyType(dict(doc)), checked_by="introspection", jkt=jkt)


def _audience(value: object, issuer: str) -> tuple[str, ...]:
    """RFC 7662 `aud`: a string or a list of them. A token asked for no resource has no
    audience at introspection, and the issuer as its JWT `aud` (the contract of
    self-contained tokens); both forms read as the issuer here, so one rule covers both."""
    if value is None:
        return (issuer,)
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise Rejected("The access token's audience is malformed.")
