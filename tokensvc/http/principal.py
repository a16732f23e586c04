"""OmniFund token login (`POST /login`) and `GET /oauth/userinfo`: who holds this bearer token."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from tokensvc.http.bearer import access_token, principal
from tokensvc.http.responses import json_response
from tokensvc.services import Services


class PrincipalEndpoints:
    def __init__(self, svc: Services) -> None:
        self.svc = svc

    async def principal(self, request: Request) -> Response:
        """RFC 6750: a missing, expired, revoked or unknown token is 401 invalid_token."""
        record = await access_token(request, self.svc)
        return json_response(principal(record), no_store=True)
