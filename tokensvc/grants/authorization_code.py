"""RFC 6749 §4.1.3 authorization code grant with RFC 7636 PKCE."""

from __future__ import annotations

from tokensvc import pkce
from tokensvc.errors import InvalidGrant, InvalidRequest
from tokensvc.grants.base import Grant, GrantContext
from tokensvc.models import TokenResponse

GRANT_TYPE = "authorization_code"


async def handle(ctx: GrantContext) -> TokenResponse:
    code = ctx.params.get("code")
    redirect_uri = ctx.params.get("redirect_uri")
    if code is None:
        raise InvalidRequest("code is required.")
    if redirect_uri is None:
        # RFC 6749 §4.1.3: required when the authorization request carried one, which ours must.
        raise InvalidRequest("redirect_uri is required.")
    try:
        verifier = pkce.verifier(ctx.params.get("code_verifier"))
    except pkce.PkceError as exc:
        raise InvalidRequest(str(exc)) from None
    if ctx.client.is_public and verifier is None:
        raise InvalidGrant("A public client must send its code_verifier (PKCE).")
    return await ctx.issuer.redeem(ctx.client, code, redirect_uri, verifier)


GRANT = Grant(GRANT_TYPE, handle, allows_public=True)
