"""RFC 6749 §4.4 client credentials grant: an access token for the client itself."""

from __future__ import annotations

from tokensvc import resources, scopes
from tokensvc.grants.base import Grant, GrantContext
from tokensvc.models import TokenResponse

GRANT_TYPE = "client_credentials"


async def handle(ctx: GrantContext) -> TokenResponse:
    client = ctx.client
    scope = scopes.grant(scopes.parse(ctx.params.get("scope")), client.scopes)
    aud = resources.audience(resources.parse(ctx.params.get("resource")), client.resources)
    # RFC 6749 §4.4.3: a refresh token SHOULD NOT be included.
    return await ctx.tokens.lone(client, scope, aud, ctx.jkt)


# RFC 6749 §4.4: the client credentials grant MUST only be used by confidential clients.
GRANT = Grant(GRANT_TYPE, handle, allows_public=False)
