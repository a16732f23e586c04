"""OmniFund token login (`POST /login`) and `GET /oauth/userinfo`: who holds this bearer token."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from tokensvc.errors import InvalidToken
from tokensvc.oauth import bearer
from tokensvc.responses import json_response
from tokensvc.services import Services
from tokensvc.tokens import ACCESS


class PrincipalEndpoints:
    def __init__(self, svc: Services) -> None:
        self.svc = svc

    async def principal(self, request: Request) -> Response:
        """RFC 6750: a missing, expired, revoked or unknown token is 401 invalid_token."""
        token = bearer(request)
        if token is None:
            raise InvalidToken("An access token is required (Authorization: Bearer ...).")
        record = await self.svc.issuer.active(token, ACCESS)
        if record is None:
            raise InvalidToken("The access token is invalid, expired or revoked.")
        body: dict[str, object] = {
            "type": "user" if record.username is not None else "client",
            "sub": record.username or record.client_id,
            "client_id": record.client_id,
            "scope": record.scope or None,
            "iat": record.issued_at // 1000,
            "exp": record.expires_at // 1000,
        }
        if record.username is not None:
            body["username"] = record.username
        return json_response(body, no_store=True)
