"""RFC 6749 §6 refresh with rotation and reuse detection (RFC 9700 §4.14.2)."""

from __future__ import annotations

from tokensvc import scopes
from tokensvc.errors import InvalidRequest
from tokensvc.grants.base import Grant, GrantContext
from tokensvc.models import TokenResponse

GRANT_TYPE = "refresh_token"


async def handle(ctx: GrantContext) -> TokenResponse:
    presented = ctx.params.get("refresh_token")
    if presented is None:
        raise InvalidRequest("refresh_token is required.")
    requested = scopes.parse(ctx.params.get("scope"))
    scope = scopes.fmt(requested) if requested is not None else None
    return await ctx.issuer.refresh(ctx.client, presented, scope)


GRANT = Grant(GRANT_TYPE, handle, allows_public=True)
