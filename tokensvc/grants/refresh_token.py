"""RFC 6749 §6 refresh with rotation and reuse detection (RFC 9700 §4.14.2).

The whole exchange is rotate.lua, one script in the grant's slot: the presented token is
marked rotated and a new pair written; a rotated token presented again after the grace period
ends the grant (it leaked). A refresh token presented by another client is refused and the
grant left alone, so no client can end another's grant with a token it got hold of.
"""

from __future__ import annotations

from tokensvc import metrics, resources, scopes
from tokensvc.errors import (
    InvalidDPoPProof,
    InvalidGrant,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    OAuthError,
)
from tokensvc.grants.base import Grant, GrantContext
from tokensvc.issuance import token_type
from tokensvc.models import TokenResponse
from tokensvc.tokens import REFRESH

GRANT_TYPE = "refresh_token"
_UNKNOWN = "The refresh token is invalid, expired or revoked."
# rotate.lua's refusals, as the client is told them (RFC 6749 §5.2).
_REFUSALS: dict[str, tuple[type[OAuthError], str]] = {
    "REUSED": (InvalidGrant, "The refresh token was already used; the grant has been revoked."),
    "CLIENT": (InvalidGrant, "The refresh token was issued to another client."),
    "SCOPE": (InvalidScope, "The requested scope exceeds the scope originally granted."),
    "TARGET": (InvalidTarget, "The requested resource exceeds the audience originally granted."),
    # RFC 9449 §5: a bound refresh token is used with a proof of the same key. Without any
    # proof the request lacks one (invalid_dpop_proof); with another key's, the proof is
    # sound but the refresh token is not this key's to use (invalid_grant, as for another
    # client's token). Either way the token and its grant are left as they were.
    "DPOP_MISSING": (InvalidDPoPProof, "The refresh token is DPoP-bound: send a DPoP proof "
                     "signed with its key."),
    "DPOP_KEY": (InvalidGrant, "The refresh token is bound to another DPoP key."),
}


async def handle(ctx: GrantContext) -> TokenResponse:
    presented = ctx.params.get("refresh_token")
    if presented is None:
        raise InvalidRequest("refresh_token is required.")
    requested = scopes.parse(ctx.params.get("scope"))
    scope = scopes.fmt(requested) if requested is not None else ""
    # RFC 8707 §2.2: a subset of the grant's audience (rotate.lua), and of the client's
    # registered resources as they are now.
    wanted = resources.parse(ctx.params.get("resource"))
    if wanted is not None:
        resources.allow(wanted, ctx.client.resources)
    tokens = ctx.tokens
    parsed = tokens.codec.parse(presented, REFRESH)
    if parsed is None:
        raise InvalidGrant(_UNKNOWN)
    at_ttl = tokens.access_ttl(ctx.client) * 1000
    rt_ttl = tokens.refresh_ttl(ctx.client) * 1000
    access = tokens.new_access(ctx.client, parsed.grant_id)
    if access.jti is not None:
        # Before the rotation: once it has happened, the new JWT must be signable.
        await tokens.prepare(ctx.client)
    refresh = tokens.codec.mint(REFRESH, parsed.grant_id)
    out = await ctx.store.rotate(parsed.grant_id, parsed.digest, access.digest, refresh.digest,
                                 ctx.client.client_id, scope, at_ttl, rt_ttl,
                                 ctx.settings.refresh_grace * 1000,
                                 " ".join(wanted) if wanted is not None else "",
                                 ctx.jkt or "", ctx.client.is_public)
    if out[0] == "OK":
        if out[1]:
            # Rotation extends the grant's life; the user's grant set must follow it.
            await ctx.store.link_user_grant(out[1], parsed.grant_id, max(at_ttl, rt_ttl))
        token = tokens.finish(access, ctx.client, out[1] or None, out[2], out[5] or None,
                              int(out[3]), at_ttl, ctx.jkt)
        return TokenResponse(token, at_ttl // 1000, out[2], refresh.token, token_type(ctx.jkt))
    if out[0] == "REUSED":
        metrics.refresh_reuse()
    elif out[0] in ("DPOP_MISSING", "DPOP_KEY"):
        metrics.dpop_refused("missing" if out[0] == "DPOP_MISSING" else "key")
    error, description = _REFUSALS.get(out[0], (InvalidGrant, _UNKNOWN))
    raise error(description)


GRANT = Grant(GRANT_TYPE, handle, allows_public=True)
