"""RFC 6749 §4.1 authorization code grant with RFC 7636 PKCE: the code the authorize endpoint
issues (`issue_code`) and its redemption at the token endpoint (`handle`).

The code opens its own grant: the tokens redeemed from it join that grant, so a replay ends all
of them in one script (redeem.lua), which also spends the code and compares PKCE, so a code is
never redeemed twice whatever the verifier.
"""

from __future__ import annotations

from tokensvc import metrics, pkce, resources
from tokensvc.errors import InvalidGrant, InvalidRequest, InvalidTarget
from tokensvc.grants.base import Grant, GrantContext
from tokensvc.issuance import TokenWriter, now_ms, token_type
from tokensvc.models import Client, TokenResponse
from tokensvc.store import keys, records
from tokensvc.tokens import CODE, REFRESH, new_grant_id

GRANT_TYPE = "authorization_code"
_UNKNOWN = "The authorization code is invalid, expired or already used."
# redeem.lua's outcomes, as the client is told them (all invalid_grant, RFC 6749 §5.2).
_REFUSALS = {
    "REPLAY": "The authorization code was already used; its tokens are revoked.",
    "CLIENT": "The authorization code was issued to another client.",
    "REDIRECT": "redirect_uri does not match the authorization request.",
    "PKCE": "The code_verifier does not match the code_challenge.",
    "DPOP": "The authorization request bound the code to a DPoP key (dpop_jkt); the token "
            "request's proof must be signed with that key.",
}
_WIDER = "The requested resource exceeds the resources of the authorization request."


async def issue_code(tokens: TokenWriter, client: Client, username: str, scope: str,
                     redirect_uri: str, redirect_uri_sent: bool, challenge: str | None,
                     method: str | None, aud: str | None = None, jkt: str | None = None) -> str:
    """RFC 6749 §4.1.2: a single-use code bound to client, user, scope, redirect, PKCE, the
    audience (RFC 8707) and the DPoP key (RFC 9449 §10 `dpop_jkt`) of the authorization request.

    `redirect_uri` is where the code goes; `redirect_uri_sent` says whether the request named
    it, which decides whether its redemption must (RFC 6749 §4.1.3).
    Indexed in its grant and linked to the user like a token, so deleting the user (the
    cascade over the user's grants) ends a code not yet redeemed, too."""
    ttl = tokens.settings.code_ttl * 1000
    grant_id = new_grant_id()
    code = tokens.codec.mint(CODE, grant_id)
    record = records.encode_code(client.client_id, username, scope, grant_id, redirect_uri,
                                 redirect_uri_sent, challenge, method, now_ms(), ttl, aud, jkt)
    await tokens.store.issue(grant_id, [(keys.token(grant_id, code.digest), record, ttl)])
    await tokens.store.link_user_grant(username, grant_id, ttl)
    metrics.code_event("issued")
    return code.token


async def handle(ctx: GrantContext) -> TokenResponse:
    """RFC 6749 §4.1.3 + RFC 7636 §4.6."""
    code = ctx.params.get("code")
    redirect_uri = ctx.params.get("redirect_uri")
    if code is None:
        raise InvalidRequest("code is required.")
    try:
        verifier = pkce.verifier(ctx.params.get("code_verifier"))
    except pkce.PkceError as exc:
        raise InvalidRequest(str(exc)) from None
    client = ctx.client
    if client.is_public and verifier is None:
        raise InvalidGrant("A public client must send its code_verifier (PKCE).")
    # RFC 8707 §2.2: a subset of the code's audience (redeem.lua), and of the client's
    # registered resources as they are now.
    wanted = resources.parse(ctx.params.get("resource"))
    if wanted is not None:
        resources.allow(wanted, client.resources)
    tokens = ctx.tokens
    parsed = tokens.codec.parse(code, CODE)
    if parsed is None:
        raise InvalidGrant(_UNKNOWN)
    with_refresh = "refresh_token" in client.grant_types
    at_ttl = tokens.access_ttl(client) * 1000
    rt_ttl = tokens.refresh_ttl(client) * 1000
    access = tokens.new_access(client, parsed.grant_id)
    if access.jti is not None:
        # Before the code is spent: once it is, the new JWT must be signable.
        await tokens.prepare(client)
    refresh = tokens.codec.mint(REFRESH, parsed.grant_id)
    s256 = "" if verifier is None else pkce.s256(verifier)
    out = await ctx.store.redeem(parsed.grant_id, parsed.digest, access.digest, refresh.digest,
                                 client.client_id, redirect_uri or "", verifier or "", s256,
                                 at_ttl, rt_ttl, with_refresh,
                                 " ".join(wanted) if wanted is not None else "",
                                 ctx.jkt or "", client.is_public)
    if out[0] == "TARGET":
        raise InvalidTarget(_WIDER)
    if out[0] == "REPLAY":
        metrics.code_event("replayed")
    if out[0] == "NO_REDIRECT":
        # RFC 6749 §4.1.3: redirect_uri is REQUIRED "if the redirect_uri parameter was included
        # in the authorization request". A missing parameter is invalid_request (§5.2); the code
        # is left as it was, as for any other request refused for what it lacks.
        raise InvalidRequest("redirect_uri is required: the authorization request named one.")
    if out[0] != "OK":
        raise InvalidGrant(_REFUSALS.get(out[0], _UNKNOWN))
    metrics.code_event("redeemed")
    username, scope = out[1], out[2]
    await ctx.store.link_user_grant(username, parsed.grant_id,
                                    max(at_ttl, rt_ttl) if with_refresh else at_ttl)
    token = tokens.finish(access, client, username, scope, out[4] or None, int(out[3]), at_ttl,
                          ctx.jkt)
    return TokenResponse(token, at_ttl // 1000, scope, refresh.token if with_refresh else None,
                         token_type(ctx.jkt))


GRANT = Grant(GRANT_TYPE, handle, allows_public=True)
