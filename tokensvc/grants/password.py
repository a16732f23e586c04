"""RFC 6749 §4.3 resource owner password credentials grant, with finAPI's lockout and 403/423."""

from __future__ import annotations

from tokensvc import resources, scopes
from tokensvc.errors import InvalidRequest
from tokensvc.grants.base import Grant, GrantContext
from tokensvc.models import TokenResponse
from tokensvc.userauth import authenticate

GRANT_TYPE = "password"


async def handle(ctx: GrantContext) -> TokenResponse:
    username = ctx.params.get("username")
    password = ctx.params.get("password")
    if username is None or password is None:
        raise InvalidRequest("username and password are required.")
    scope = scopes.grant(scopes.parse(ctx.params.get("scope")), ctx.client.scopes)
    # RFC 8707: checked before the password, so a refused resource costs no login attempt.
    aud = resources.audience(resources.parse(ctx.params.get("resource")), ctx.client.resources)
    user = await authenticate(ctx.store, ctx.hasher, ctx.settings, ctx.client, username, password)
    with_refresh = "refresh_token" in ctx.client.grant_types
    return await ctx.tokens.grant(ctx.client, user.username, scope, with_refresh, aud,
                                 ctx.jkt)


GRANT = Grant(GRANT_TYPE, handle, allows_public=True)
