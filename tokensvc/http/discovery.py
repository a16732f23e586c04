"""RFC 8414 metadata, liveness and readiness."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from tokensvc import dpop
from tokensvc.assertions import SECRET_ALGS
from tokensvc.errors import StoreUnavailable
from tokensvc.grants import GRANTS
from tokensvc.http.responses import error_body, json_response
from tokensvc.jwkset import KEY_ALGS
from tokensvc.services import Services

_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "client_secret_jwt", "private_key_jwt"]
# RFC 8414 §2: what client assertions (private_key_jwt, client_secret_jwt) may be signed with.
_ASSERTION_ALGS = [*KEY_ALGS, *SECRET_ALGS]
# RFC 8414 §2: the revocation and introspection endpoints' methods may be names from the "OAuth
# Token Endpoint Authentication Methods" registry "or those registered in the IANA 'OAuth Access
# Token Types' registry" (kept distinct by §7.2), the latter meaning the caller presents an
# access token of that type. `Bearer` (RFC 6750) is that registered name for finAPI's
# `Authorization: Bearer <the client's own access token>` at /oauth/revoke.
_BEARER = "Bearer"


def metadata(svc: Services) -> dict[str, object]:
    """Only what is actually served: each endpoint, grant and method listed here works."""
    issuer = svc.settings.issuer_url
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/oauth/authorize",
        "token_endpoint": f"{issuer}/oauth/token",
        "revocation_endpoint": f"{issuer}/oauth/revoke",
        "introspection_endpoint": f"{issuer}/oauth/introspect",
        "userinfo_endpoint": f"{issuer}/oauth/userinfo",
        "jwks_uri": f"{issuer}/.well-known/jwks.json",
        "registration_endpoint": f"{issuer}/oauth/register",
        "grant_types_supported": sorted(GRANTS),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "code_challenge_methods_supported": (["S256", "plain"] if svc.settings.allow_plain_pkce
                                             else ["S256"]),
        "authorization_response_iss_parameter_supported": True,
        "token_endpoint_auth_methods_supported": [*_AUTH_METHODS, "none"],
        "revocation_endpoint_auth_methods_supported": [*_AUTH_METHODS, "none", _BEARER],
        "introspection_endpoint_auth_methods_supported": _AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": _ASSERTION_ALGS,
        "revocation_endpoint_auth_signing_alg_values_supported": _ASSERTION_ALGS,
        "introspection_endpoint_auth_signing_alg_values_supported": _ASSERTION_ALGS,
        # RFC 9449 §5.1: the algorithms a DPoP proof may be signed with.
        "dpop_signing_alg_values_supported": list(dpop.ALGS),
    }


class DiscoveryEndpoints:
    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self._metadata = metadata(svc)

    async def metadata(self, request: Request) -> Response:
        return json_response(self._metadata, headers={"Cache-Control": "public, max-age=300"})

    async def jwks(self, request: Request) -> Response:
        """RFC 7517 JWK Set of the keys that sign JWT access tokens (signing.py): the next key
        from the moment it is made, old ones until their last token has expired. Cacheable
        for half the publish-ahead, so a cached copy already holds any key that signs."""
        signer = self.svc.signer
        if not signer.keys:  # never read (Redis down since start): 503, never an empty set
            await signer.refresh()
        return Response(signer.jwks_body, media_type="application/json",
                        headers={"Cache-Control": f"public, max-age={signer.max_age}"})

    async def healthz(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        """Ready while Redis answers and the client-cache invalidations are flowing."""
        try:
            await self.svc.store.ping()
        except StoreUnavailable:
            body = {**error_body("temporarily_unavailable", "Storage is unavailable; retry shortly."),
                    "status": "unavailable", "redis": False}
            return json_response(body, 503, {"Retry-After": str(self.svc.settings.retry_after)},
                                 no_store=True)
        return json_response({"status": "ok", "redis": True,
                              "invalidation": self.svc.clients.live})
