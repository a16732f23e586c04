"""RFC 6749 §4.3 resource owner password credentials grant, with finAPI's lockout and 403/423."""

from __future__ import annotations

from tokensvc import scopes
from tokensvc.errors import InvalidGrant, InvalidRequest, UserLocked, UserNotVerified
from tokensvc.grants.base import Grant, GrantContext
from tokensvc.models import TokenResponse

GRANT_TYPE = "password"


async def handle(ctx: GrantContext) -> TokenResponse:
    username = ctx.params.get("username")
    password = ctx.params.get("password")
    if username is None or password is None:
        raise InvalidRequest("username and password are required.")
    scope = scopes.grant(scopes.parse(ctx.params.get("scope")), ctx.client.scopes)
    limit = ctx.client.max_user_login_attempts or ctx.settings.max_user_login_attempts
    user, failures = await ctx.store.get_user(username)
    if failures >= limit:
        raise UserLocked("The user is locked after too many failed logins.")
    if user is None:
        # No counter for unknown names (nothing to lock, no keys to fill Redis with), but the
        # same argon2 time, so the answer's timing does not reveal which usernames exist.
        await ctx.hasher.verify_nobody(password)
        raise InvalidGrant("Invalid username or password.")
    if not await ctx.hasher.verify(user.password_hash, password):
        failures = await ctx.store.login_failed(username, ctx.settings.lockout_period * 1000)
        if failures >= limit:
            raise UserLocked("The user is locked after too many failed logins.")
        raise InvalidGrant("Invalid username or password.")
    if failures:
        await ctx.store.reset_failures(username)
    if ctx.client.require_verified_users and not user.verified:
        raise UserNotVerified("The user is not verified, and this client requires verified users.")
    with_refresh = "refresh_token" in ctx.client.grant_types
    return await ctx.issuer.issue(ctx.client, username, scope, with_refresh)


GRANT = Grant(GRANT_TYPE, handle, allows_public=True)
