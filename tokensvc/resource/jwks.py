"""RFC 9068 JWT access tokens, checked locally against the issuer's JWKS with PyJWT.

The key set is fetched once and used until its `Cache-Control: max-age` runs out (bounded
by `min_interval` and `max_age`). A `kid` it does not hold makes it fetch again early, at
most once per `min_interval`; concurrent misses wait for that one fetch. A flood of tokens
naming made-up keys therefore costs the issuer one request per interval, and a key the
issuer has just started signing with is found by the first token that names it.

The algorithm is pinned to the JWK's own `alg`, from an allow-list of asymmetric algorithms,
never taken from the token: `alg: none` and an HS256 token "signed" with the public key are
refused before any signature is computed (RFC 8725 §2.1, §3.1).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Collection, Mapping
from types import MappingProxyType
from typing import Any

import jwt as pyjwt

from tokensvc.resource.errors import IssuerUnavailable, Rejected
from tokensvc.resource.fetch import Fetcher
from tokensvc.resource.principal import Principal

log = logging.getLogger("tokensvc.resource")

SUPPORTED_ALGORITHMS = frozenset({"ES256", "EdDSA"})
# RFC 9068 §2.1: "at+jwt"; RFC 7515 §4.1.9 lets "application/" be left out, case-insensitively.
_TYPES = frozenset({"at+jwt", "application/at+jwt"})
# RFC 9068 §2.2: claims every JWT access token carries.
REQUIRED_CLAIMS = ["iss", "exp", "aud", "sub", "client_id", "iat", "jti"]
MAX_KEYS = 100
_MAX_AGE = re.compile(r"(?:^|[,\s])max-age=(\d+)")

_JWS = pyjwt.PyJWS()


def looks_like_jwt(token: str) -> bool:
    """Three dot-separated parts (JWS compact serialization); an opaque token has no dots."""
    return token.count(".") == 2


class KeySet:
    """The issuer's signing keys by `kid`, fetched as the module docstring says."""

    def __init__(self, fetcher: Fetcher, uri: str, algorithms: frozenset[str], min_interval: float,
                 max_age: float) -> None:
        self.fetcher = fetcher
        self.uri = uri
        self.algorithms = algorithms
        self.min_interval = min_interval
        self.max_age = max_age
        self.fetches = 0
        self._keys: dict[str, pyjwt.PyJWK] = {}
        self._loaded = False
        self._attempted = -math.inf  # time.monotonic() of the last fetch attempt
        self._stale_at = -math.inf
        self._lock = asyncio.Lock()

    def _due(self, kid: str) -> bool:
        now = time.monotonic()
        wanted = kid not in self._keys or now >= self._stale_at
        return wanted and now - self._attempted >= self.min_interval

    async def key(self, kid: str) -> pyjwt.PyJWK | None:
        """The key named `kid`, fetching the set again when it is stale or lacks the kid (at
        the bounded rate); None when the issuer does not publish it."""
        # A fetch in flight may bring the kid: a miss waits for it rather than failing.
        if self._due(kid) or (kid not in self._keys and self._lock.locked()):
            async with self._lock:
                if self._due(kid):  # not already fetched by the request this one waited for
                    try:
                        await self.refresh()
                    except IssuerUnavailable:
                        if kid not in self._keys:
                            raise
        if not self._loaded:
            raise IssuerUnavailable(f"the JWKS at {self.uri} has not been fetched yet")
        return self._keys.get(kid)

    async def refresh(self) -> None:
        """Fetch the set now (the caller holds the rate limit)."""
        self._attempted = time.monotonic()
        self.fetches += 1
        doc, headers = await self.fetcher.get(self.uri, "the JWKS")
        entries = doc.get("keys")
        if not isinstance(entries, list):
            log.warning("tokensvc.resource: the JWKS at %s has no list of keys", self.uri)
            raise IssuerUnavailable(f"the JWKS at {self.uri} has no list of keys")
        keys: dict[str, pyjwt.PyJWK] = {}
        for entry in entries[:MAX_KEYS]:
            key = self._usable(entry)
            if key is not None and key.key_id is not None:
                keys.setdefault(key.key_id, key)
        self._keys = keys
        self._loaded = True
        self._stale_at = time.monotonic() + self._lifetime(headers.get("cache-control", ""))

    def _usable(self, entry: object) -> pyjwt.PyJWK | None:
        """A public signing key with a kid and an allowed alg of its own; anything else is
        left out (an issuer may publish keys this API does not use)."""
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            return None
        if entry.get("alg") not in self.algorithms or entry.get("use", "sig") != "sig" or "d" in entry:
            return None
        try:
            return pyjwt.PyJWK(entry)
        except pyjwt.PyJWTError as exc:
            log.warning("tokensvc.resource: JWKS key %r left out: %s", entry["kid"][:64], exc)
            return None

    def _lifetime(self, cache_control: str) -> float:
        found = _MAX_AGE.search(cache_control.lower())
        seconds = float(found.group(1)) if found else self.max_age
        return min(max(seconds, self.min_interval), self.max_age)


class JWTVerifier:
    """Checks one JWT access token: header, key, signature, then RFC 9068's claims."""

    def __init__(self, keys: KeySet, issuer: str, audience: str, leeway: float) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway

    async def verify(self, token: str) -> Principal:
        try:
            header = _JWS.get_unverified_header(token)
        except pyjwt.PyJWTError:
            raise Rejected("The access token is not a well-formed JWT.") from None
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in _TYPES:
            raise Rejected("The token is not a JWT access token (typ must be at+jwt, RFC 9068).")
        alg = header.get("alg")
        if alg not in self.keys.algorithms:
            raise Rejected("The token's signing algorithm is not accepted here.")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Rejected("The token names no signing key (kid).")
        key = await self.keys.key(kid)
        if key is None:
            raise Rejected("The token's signing key is not one of the issuer's.")
        if key.algorithm_name != alg:
            raise Rejected("The token's algorithm is not its key's.")
        try:
            claims = pyjwt.decode(token, key, algorithms=[key.algorithm_name], audience=self.audience,
                                  issuer=self.issuer, leeway=self.leeway,
                                  options={"require": REQUIRED_CLAIMS})
        except pyjwt.PyJWTError as exc:
            raise Rejected(_reason(exc)) from None
        return principal(claims)


def _reason(exc: pyjwt.PyJWTError) -> str:
    if isinstance(exc, pyjwt.ExpiredSignatureError):
        return "The access token expired."
    if isinstance(exc, pyjwt.ImmatureSignatureError):
        return "The access token is not valid yet."
    if isinstance(exc, pyjwt.InvalidAudienceError):
        return "The access token is not for this API (aud)."
    if isinstance(exc, pyjwt.InvalidIssuerError):
        return "The access token is from another issuer (iss)."
    if isinstance(exc, pyjwt.MissingRequiredClaimError):
        return f"The access token lacks the claim {exc.claim}."
    if isinstance(exc, pyjwt.InvalidSignatureError):
        return "The access token's signature does not verify."
    return "The access token is malformed."


def _integer(claims: Mapping[str, Any], name: str) -> int:
    value = claims.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise Rejected(f"The access token's {name} is not a number of seconds.")
    return value


def principal(claims: dict[str, Any]) -> Principal:
    """The principal of verified claims, after the type checks PyJWT leaves to the caller."""
    exp = _integer(claims, "exp")
    _integer(claims, "iat")
    sub, client_id, scope = claims.get("sub"), claims.get("client_id"), claims.get("scope", "")
    if not isinstance(sub, str) or not isinstance(client_id, str) or not isinstance(scope, str):
        raise Rejected("The access token's sub, client_id or scope is not a string.")
    aud = claims["aud"]
    # RFC 9068 §2.2: `sub` is the client id when the client acts for itself, else the user.
    return Principal(sub=sub, client_id=client_id, scopes=frozenset(scope.split()),
                     aud=(aud,) if isinstance(aud, str) else tuple(aud), exp=exp,
                     username=sub if sub != client_id else None, claims=MappingProxyType(claims),
                     checked_by="jwt", jkt=bound_to(claims))


def bound_to(claims: Mapping[str, Any]) -> str | None:
    """RFC 9449 §6: the thumbprint of the DPoP key a token is bound to (`cnf.jkt`); None for a
    bearer token. A confirmation this kit cannot check (mTLS `x5t#S256`, a malformed one) is
    refused, never read as no binding."""
    if "cnf" not in claims:
        return None
    cnf = claims["cnf"]
    jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
    if not isinstance(jkt, str) or not jkt or len(cnf) != 1:
        raise Rejected("The access token is bound to a key in a way this API cannot check (cnf).")
    return jkt


def check_algorithms(algorithms: Collection[str]) -> frozenset[str]:
    """The allow-list a deployment narrows SUPPORTED_ALGORITHMS to; nothing symmetric, ever."""
    chosen = frozenset(algorithms)
    if not chosen or not chosen <= SUPPORTED_ALGORITHMS:
        raise ValueError(f"algorithms must be some of {sorted(SUPPORTED_ALGORITHMS)}")
    return chosen
