"""`ResourceServer`: one protected API's view of one issuer, and the dependencies built on it."""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import re
import time
from collections.abc import Callable, Collection, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.requests import HTTPConnection, Request
from starlette.types import Scope

from tokensvc.dpop import ProofError
from tokensvc.resource.binding import MemoryReplayCache, ProofVerifier, ReplayCache
from tokensvc.resource.errors import (
    IssuerUnavailable,
    Rejected,
    insufficient_scope,
    quotable,
    unauthorized,
    unavailable,
)
from tokensvc.resource.fetch import Fetcher, metadata_url
from tokensvc.resource.introspection import Introspector
from tokensvc.resource.jwks import SUPPORTED_ALGORITHMS, JWTVerifier, KeySet, check_algorithms, looks_like_jwt
from tokensvc.resource.principal import Principal
from tokensvc.scopes import is_scope_token

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("tokensvc.resource")

# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
MAX_TOKEN = 16 * 1024
# Where a request's checked principal is kept in the ASGI scope, with the server that checked
# it: a principal checked for one API (one audience) never passes for another.
_SCOPE_KEY = "tokensvc.resource"
_NO_CREDENTIALS = "An access token is required."
# RFC 9449 §7.2: "such a protected resource MUST reject a DPoP-bound access token received as
# a bearer token".
_BOUND = "The access token is bound to a DPoP key (cnf): present it with Authorization: DPoP and a proof."
# RFC 9449 §7.1: the proof's key must match "the public key to which the access token is
# bound"; a bearer token is bound to none.
_NOT_BOUND = "The access token is not bound to a DPoP key: present it with Authorization: Bearer."
_OTHER_KEY = "The DPoP proof's key is not the one the access token is bound to."
_SCHEMES = {"bearer": "Bearer", "dpop": "DPoP"}

F = TypeVar("F", bound=Callable[..., Any])


def _dependency(method: F) -> F:
    """FastAPI injects the Request into the parameter of a dependency's `__call__` annotated
    with it. This module's annotations are strings (`from __future__ import annotations`), and
    older FastAPI releases do not evaluate those for a callable instance (they would read
    `request` as a query parameter): the dependencies carry the classes themselves."""
    method.__annotations__ = {"request": Request, "return": Principal}
    return method


class ResourceServer:
    """Checks access tokens for one API (`audience`) against one issuer: bearer tokens (RFC
    6750), and DPoP-bound ones (RFC 9449 §7) with their proofs.

    JWT access tokens are verified locally against the issuer's JWKS; opaque tokens are
    introspected when `client_id` and `client_secret` are given (a client with
    `"introspection": "all"`). The JWKS and introspection endpoints come from the issuer's
    RFC 8414 metadata unless given. An instance is itself a dependency:
    `Depends(server)` in FastAPI, `await server(request)` in Starlette;
    `server.requires("scope")` makes one that also demands scopes. `async with server:` (in
    the app's lifespan) fetches the metadata and keys at start and closes the connections at
    the end; without it they are fetched on the first request.

    A DPoP proof must name the URL the client used: `public_url` (scheme, host and any path
    prefix a proxy takes off, e.g. `https://api.example`) when the API sits behind one, else
    the request's own URL. Each proof is accepted once, as `replay` remembers (binding.py: in
    this process by default).
    """

    def __init__(self, issuer: str, audience: str, *, realm: str | None = None,
                 client_id: str | None = None, client_secret: str | None = None,
                 jwks_uri: str | None = None, introspection_endpoint: str | None = None,
                 algorithms: Collection[str] = SUPPORTED_ALGORITHMS, leeway: float = 10.0,
                 jwks_min_interval: float = 30.0, jwks_max_age: float = 300.0,
                 cache_ttl: float = 10.0, negative_cache_ttl: float = 2.0, cache_size: int = 10_000,
                 timeout: float = 5.0, http: httpx.AsyncClient | None = None,
                 public_url: str | None = None, replay: ReplayCache | None = None) -> None:
        if not issuer or not audience:
            raise ValueError("a resource server needs its issuer and its audience")
        if (client_id is None) != (client_secret is None):
            raise ValueError("client_id and client_secret go together")
        realm = audience if realm is None else realm
        if quotable(realm, len(realm)) != realm:
            raise ValueError("the realm must be printable ASCII without '\"' or '\\'")
        if not 0 <= leeway <= 300 or jwks_min_interval <= 0 or jwks_max_age < jwks_min_interval:
            raise ValueError("leeway is 0..300 s; 0 < jwks_min_interval <= jwks_max_age")
        if cache_ttl < 0 or negative_cache_ttl < 0 or cache_size < 1:
            raise ValueError("cache times are >= 0 and the cache holds at least one entry")
        self.issuer = issuer
        self.audience = audience
        self.realm = realm
        self.algorithms = check_algorithms(algorithms)
        self.leeway = leeway
        self._client = None if client_id is None or client_secret is None else (client_id, client_secret)
        self._jwks_uri = jwks_uri
        self._introspection_endpoint = introspection_endpoint
        self._jwks_settings = (jwks_min_interval, jwks_max_age)
        self._cache_settings = (cache_ttl, negative_cache_ttl, cache_size)
        self.fetcher = Fetcher(http, timeout)
        self.keys: KeySet | None = None
        self.introspector: Introspector | None = None
        self._verifier: JWTVerifier | None = None
        self._configured = False
        self._metadata_attempted = -math.inf
        self._lock = asyncio.Lock()
        self.proofs = ProofVerifier(public_url, MemoryReplayCache() if replay is None else replay)

    async def _configure(self) -> None:
        """Find the endpoints (RFC 8414 metadata, when one that is needed was not given)."""
        async with self._lock:
            if self._configured:
                return
            jwks_uri, endpoint = self._jwks_uri, self._introspection_endpoint
            if jwks_uri is None or (self._client is not None and endpoint is None):
                if time.monotonic() - self._metadata_attempted < self._jwks_settings[0]:
                    raise IssuerUnavailable("the issuer's metadata could not be fetched")
                self._metadata_attempted = time.monotonic()
                doc, _ = await self.fetcher.get(metadata_url(self.issuer), "the issuer's metadata")
                # RFC 8414 §3.3: the metadata's issuer must be the one it was fetched for.
                if doc.get("issuer") != self.issuer:
                    raise IssuerUnavailable(f"the metadata at {metadata_url(self.issuer)} names "
                                            "another issuer")
                jwks_uri = jwks_uri or _string(doc.get("jwks_uri"))
                endpoint = endpoint or _string(doc.get("introspection_endpoint"))
            if jwks_uri is not None:
                self.keys = KeySet(self.fetcher, jwks_uri, self.algorithms, *self._jwks_settings)
                self._verifier = JWTVerifier(self.keys, self.issuer, self.audience, self.leeway)
            if self._client is not None and endpoint is not None:
                ttl, negative_ttl, size = self._cache_settings
                self.introspector = Introspector(
                    self.fetcher, endpoint, *self._client, issuer=self.issuer, audience=self.audience,
                    leeway=self.leeway, ttl=ttl, negative_ttl=negative_ttl, size=size)
            self._configured = True

    async def start(self) -> None:
        """Fetch the metadata and the keys now rather than on the first request. An issuer that
        cannot be reached is logged, not raised: the API starts, and retries on demand."""
        try:
            await self._configure()
            if self.keys is not None:
                await self.keys.refresh()
        except IssuerUnavailable as why:
            log.warning("tokensvc.resource: not ready at start (%s); retrying on demand", why)

    async def aclose(self) -> None:
        await self.fetcher.aclose()

    async def __aenter__(self) -> ResourceServer:
        await self.start()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def authenticate(self, token: str, *, jkt: str | None = None) -> Principal:
        """The principal of `token`; Rejected when it is no good here, IssuerUnavailable when
        that cannot be told now. `jkt` is the thumbprint of the key whose checked proof came
        with it (the DPoP scheme): the token must be bound to that key; without it (a bearer
        token), the token must be bound to none."""
        found = await self._principal(token)
        if found.jkt is None:
            if jkt is not None:
                raise Rejected(_NOT_BOUND)
        elif jkt is None:
            raise Rejected(_BOUND)
        elif not hmac.compare_digest(found.jkt, jkt):
            raise Rejected(_OTHER_KEY)
        return found

    async def _principal(self, token: str) -> Principal:
        if not self._configured:
            await self._configure()
        if len(token) > MAX_TOKEN:
            raise Rejected("The access token is too long.")
        if self._verifier is not None and looks_like_jwt(token):
            return await self._verifier.verify(token)
        if self.introspector is not None:
            return await self.introspector.principal(token)
        raise Rejected("This API cannot check this kind of access token.")

    async def check(self, authorization: Iterable[str], scopes: frozenset[str] = frozenset(), *,
                    dpop: Iterable[str] = (), method: str = "GET", url: str = "") -> Principal:
        """The principal of a request's Authorization header values (RFC 6750 §2.1, RFC 9449
        §7.1), holding `scopes`; else the BearerError to answer with. For the DPoP scheme,
        `dpop` is the request's DPoP header values and `method` and `url` what its proof must
        name."""
        values = list(authorization)
        if len(values) > 1:
            raise unauthorized(self.realm, "invalid_request", "Send one Authorization header.")
        given, _, rest = values[0].partition(" ") if values else ("", "", "")
        scheme = _SCHEMES.get(given.lower())
        if scheme is None:
            # RFC 6750 §3.1: a request without any credentials gets no error code.
            raise unauthorized(self.realm, None, _NO_CREDENTIALS)
        token = rest.strip(" ")
        if _B64TOKEN.fullmatch(token) is None:
            raise unauthorized(self.realm, "invalid_request",
                               f"The Authorization header is not '{scheme} <token>'.", scheme)
        proof = None
        if scheme == "DPoP":
            try:
                proof = self.proofs.check(list(dpop), method, url, token)
            except ProofError as why:
                raise unauthorized(self.realm, "invalid_dpop_proof", str(why), scheme) from None
        try:
            principal = await self.authenticate(token, jkt=None if proof is None else proof.jkt)
        except Rejected as why:
            raise unauthorized(self.realm, "invalid_token", str(why), scheme) from None
        except IssuerUnavailable as why:
            log.debug("tokensvc.resource: cannot check a token: %s", why)
            raise unavailable() from None
        if proof is not None:
            try:
                # Last: a request refused above does not spend its proof.
                await self.proofs.spend(proof)
            except ProofError as why:
                raise unauthorized(self.realm, "invalid_dpop_proof", str(why), scheme) from None
        self.demand(principal, scopes)
        return principal

    async def check_connection(self, conn: HTTPConnection, scopes: frozenset[str] = frozenset()) -> Principal:
        """`check` of a request (or WebSocket handshake) as it arrived."""
        headers = conn.headers
        url = conn.url
        method = conn.scope.get("method", "GET")  # a WebSocket handshake is a GET
        return await self.check(headers.getlist("authorization"), scopes, dpop=headers.getlist("dpop"),
                                method=method, url=self.proofs.url(str(url), url.path))

    def demand(self, principal: Principal, scopes: frozenset[str]) -> None:
        """403 insufficient_scope unless the principal holds every one of `scopes`."""
        if not principal.scopes.issuperset(scopes):
            raise insufficient_scope(self.realm, " ".join(sorted(scopes)),
                                     "Bearer" if principal.jkt is None else "DPoP")

    async def principal_of(self, conn: HTTPConnection, scopes: frozenset[str] = frozenset()) -> Principal:
        """The request's principal: the one this server already checked for it (its
        middleware, another dependency), else checked now; and kept on the request
        (`request.state.principal`)."""
        found = recall(conn.scope, self)
        if found is None:
            found = await self.check_connection(conn)
            remember(conn.scope, self, found)
        self.demand(found, scopes)
        return found

    @_dependency
    async def __call__(self, request: Request) -> Principal:
        """A dependency: FastAPI `Depends(server)`; Starlette `await server(request)`."""
        return await self.principal_of(request)

    def requires(self, *scopes: str) -> Guard:
        """A dependency that also demands `scopes` (403 insufficient_scope without them)."""
        return Guard(self, scopes)


class Guard:
    """`server.requires(...)`: FastAPI `Depends(guard)`; Starlette `await guard(request)`."""

    __slots__ = ("scopes", "server")

    def __init__(self, server: ResourceServer, scopes: Iterable[str]) -> None:
        self.scopes = scope_set(scopes)
        if not self.scopes:
            raise ValueError("requires() takes one or more scopes")
        self.server = server

    @_dependency
    async def __call__(self, request: Request) -> Principal:
        return await self.server.principal_of(request, self.scopes)


def scope_set(scopes: Iterable[str]) -> frozenset[str]:
    """Required scopes, each an RFC 6749 scope-token (they are quoted in the 403's challenge)."""
    chosen = frozenset(scopes)
    if not all(is_scope_token(s) for s in chosen):
        raise ValueError("a required scope must be an RFC 6749 scope-token")
    return chosen


def remember(scope: Scope, server: ResourceServer, principal: Principal) -> None:
    scope[_SCOPE_KEY] = (server, principal)
    scope.setdefault("state", {})["principal"] = principal


def recall(scope: Scope, server: ResourceServer) -> Principal | None:
    kept: Any = scope.get(_SCOPE_KEY)
    if isinstance(kept, tuple) and kept[0] is server and isinstance(kept[1], Principal):
        return kept[1]
    return None


def _string(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
