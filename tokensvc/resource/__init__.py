"""The resource-server kit: what an API needs to accept tokensvc access tokens.

    server = ResourceServer(issuer="https://auth.example", audience="https://api.example/orders",
                            client_id=..., client_secret=...)   # the client: for opaque tokens
    app = Starlette(routes=..., middleware=[Middleware(BearerMiddleware, server=server)],
                    exception_handlers={BearerError: bearer_error_handler})
    # or per route, FastAPI: who: Principal = Depends(server.requires("orders:write"))

JWT access tokens (RFC 9068) are verified locally against the issuer's JWKS; opaque ones go
to introspection (RFC 7662) through a short cache; a token bound to a DPoP key (RFC 9449)
passes with `Authorization: DPoP` and its proof only; a refusal is RFC 6750's (or RFC 9449's)
401 or 403 with its `WWW-Authenticate`. Needs the `resource` extra (httpx). It imports
nothing of the service but three small leaf modules (`tokensvc.lru`, `tokensvc.scopes`,
`tokensvc.dpop`): an API that uses it runs none of the service.
"""

from __future__ import annotations

from tokensvc.resource.asgi import BearerMiddleware, bearer_error_handler
from tokensvc.resource.binding import MemoryReplayCache, ReplayCache
from tokensvc.resource.errors import BearerError, IssuerUnavailable, Rejected
from tokensvc.resource.jwks import SUPPORTED_ALGORITHMS
from tokensvc.resource.principal import Principal
from tokensvc.resource.server import Guard, ResourceServer

__all__ = [
    "SUPPORTED_ALGORITHMS", "BearerError", "BearerMiddleware", "Guard", "IssuerUnavailable",
    "MemoryReplayCache", "Principal", "Rejected", "ReplayCache", "ResourceServer",
    "bearer_error_handler",
]
