"""OmniFund token login (`POST /login`) and `GET /oauth/userinfo`: who holds this access token
(a bearer token, or a DPoP-bound one with its proof, RFC 9449 §7)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from tokensvc.http.bearer import DPoPPresentations, access_token, principal
from tokensvc.http.responses import json_response
from tokensvc.proofs import nonce_header
from tokensvc.services import Services


class PrincipalEndpoints:
    def __init__(self, svc: Services, presentations: DPoPPresentations) -> None:
        self.svc = svc
        self.presentations = presentations

    async def principal(self, request: Request) -> Response:
        """RFC 6750: a missing, expired, revoked or unknown token is 401 invalid_token; RFC
        9449 §7.1: a DPoP-bound one needs its proof."""
        record = await access_token(request, self.svc, self.presentations)
        if record.jkt is None:
            return json_response(principal(record), no_store=True)
        # RFC 9449 §9: the next nonce rides on the answer, sparing the client a 401 round trip.
        return json_response(principal(record), headers=nonce_header(self.svc.nonces), no_store=True)
