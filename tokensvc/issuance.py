"""Token issuance: minting, finAPI token reuse and refresh rotation, on top of RedisStore.

Time is taken once per request here; records carry epoch milliseconds, while Redis TTLs are
the authority on expiry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import orjson

from tokensvc import metrics, pkce
from tokensvc.clients import ClientDirectory
from tokensvc.errors import InvalidGrant, InvalidScope
from tokensvc.lru import LRU
from tokensvc.models import Client, TokenRecord, TokenResponse
from tokensvc.settings import Settings
from tokensvc.store import keys
from tokensvc.store.redis import RedisStore, encode_record, token_record
from tokensvc.tokens import (
    ACCESS,
    CODE,
    REFRESH,
    Minted,
    TokenCodec,
    derived_grant_id,
    new_grant_id,
    new_seed,
)

# redeem.lua's outcomes, as the client is told them (all invalid_grant, RFC 6749 §5.2).
_REDEEM_REFUSALS = {
    "REPLAY": "The authorization code was already used; its tokens are revoked.",
    "CLIENT": "The authorization code was issued to another client.",
    "REDIRECT": "redirect_uri does not match the authorization request.",
    "PKCE": "The code_verifier does not match the code_challenge.",
    "UNKNOWN": "The authorization code is invalid, expired or already used.",
}


@dataclass(frozen=True, slots=True)
class _Reused:
    client_id: str
    access: str
    refresh: str | None
    expires_at: int
    until: int


def now_ms() -> int:
    return int(time.time() * 1000)


class TokenIssuer:
    """Mints tokens for a client (and user) and persists them in the grant's hash slot."""

    def __init__(self, store: RedisStore, codec: TokenCodec, clients: ClientDirectory,
                 settings: Settings) -> None:
        self.store = store
        self.codec = codec
        self.clients = clients
        self.settings = settings
        # finAPI reuse, per worker: grant id -> the live answer and until when (epoch ms) it
        # may be handed out (while at least half its lifetime is left). Trusted only while the
        # invalidation channel is live; every deletion of a reuse record in Redis (revocation,
        # rotation, the user's or the client's end) is announced there and drops the entry.
        # As many reuse answers as client records (one per client, user and scope set in use).
        self._reused: LRU[str, _Reused] = LRU(settings.secret_cache_size)
        clients.on_forget.append(self._forget_reused)

    def _forget_reused(self, name: str | None) -> None:
        if name is None:
            self._reused.clear()
        elif name.startswith("g:"):
            self._reused.pop(name[2:])
        else:  # a client changed or went: its reuse answers go too
            for grant_id in [g for g, r in self._reused.items() if r.client_id == name]:
                self._reused.pop(grant_id)

    async def active(self, token: str, kind: str | None = None) -> TokenRecord | None:
        """The record of a live token: minted here, stored, not rotated, its client not revoked."""
        parsed = self.codec.parse(token, kind)
        if parsed is None or parsed.kind == CODE:
            return None
        record = token_record(await self.store.get_token(parsed.grant_id, parsed.digest))
        if record is None or record.rotated_at is not None:
            return None
        # Revoking a client ends its tokens at once: they die with the client record.
        if await self.clients.get(record.client_id) is None:
            return None
        return record

    def access_ttl(self, client: Client) -> int:
        return client.access_token_ttl or self.settings.access_token_ttl

    def refresh_ttl(self, client: Client) -> int:
        return client.refresh_token_ttl or self.settings.refresh_token_ttl

    def reuses(self, client: Client) -> bool:
        return self.settings.reuse_tokens if client.reuse_tokens is None else client.reuse_tokens

    async def issue(self, client: Client, username: str | None, scope: str,
                    with_refresh: bool) -> TokenResponse:
        """New tokens for a grant; with reuse on, the live ones from an identical request."""
        if self.reuses(client):
            reused = await self._issue_reusable(client, username, scope, with_refresh)
            if reused is not None:
                return reused
        at_ttl = self.access_ttl(client) * 1000
        now = now_ms()
        grant_id = new_grant_id()
        access = self.codec.mint(ACCESS, grant_id)
        at_key = keys.token(grant_id, access.digest)
        at_rec = encode_record(ACCESS, client.client_id, username, scope, grant_id, now, at_ttl)
        if not with_refresh and username is None:
            # client_credentials: one lone token, nothing to index (the hot path: one SET).
            await self.store.put_token(at_key, at_rec, at_ttl)
            return TokenResponse(access.token, at_ttl // 1000, scope)
        if not with_refresh:
            await self.store.issue(grant_id, [(at_key, at_rec, at_ttl)])
            await self.store.link_user_grant(username or "", grant_id, at_ttl)
            return TokenResponse(access.token, at_ttl // 1000, scope)
        rt_ttl = self.refresh_ttl(client) * 1000
        refresh = self.codec.mint(REFRESH, grant_id)
        rt_rec = encode_record(REFRESH, client.client_id, username, scope, grant_id, now, rt_ttl)
        await self.store.issue(grant_id, [(at_key, at_rec, at_ttl),
                                          (keys.token(grant_id, refresh.digest), rt_rec, rt_ttl)])
        if username is not None:
            await self.store.link_user_grant(username, grant_id, max(at_ttl, rt_ttl))
        return TokenResponse(access.token, at_ttl // 1000, scope, refresh.token)

    async def _issue_reusable(self, client: Client, username: str | None, scope: str,
                              with_refresh: bool) -> TokenResponse | None:
        """finAPI reuse: identical requests meet on one derived grant and one reuse record.

        None only when the live token was derived under a server key that is no longer
        configured; the caller then issues an ordinary token.
        """
        at_ttl = self.access_ttl(client) * 1000
        rt_ttl = self.refresh_ttl(client) * 1000
        now = now_ms()
        grant_id = derived_grant_id("reuse", client.client_id, username or "", scope)
        cached = self._reused.get(grant_id) if self.clients.live else None
        if cached is not None:
            if now < cached.until:
                return TokenResponse(cached.access, (cached.expires_at - now) // 1000, scope,
                                     cached.refresh)
            self._reused.pop(grant_id)
        epoch = self.clients.epoch
        at_seed = new_seed()
        access = self.codec.derive(ACCESS, grant_id, at_seed)
        assert access is not None
        at_key = keys.token(grant_id, access.digest)
        record: dict[str, object] = {"l": at_ttl, "a": at_key, "sa": at_seed, "k": self.codec.key_id}
        tokens = [(at_key, encode_record(ACCESS, client.client_id, username, scope, grant_id, now,
                                         at_ttl), at_ttl)]
        refresh: Minted | None = None
        if with_refresh:
            rt_seed = new_seed()
            refresh = self.codec.derive(REFRESH, grant_id, rt_seed)
            assert refresh is not None
            record["sr"] = rt_seed
            tokens.append((keys.token(grant_id, refresh.digest),
                           encode_record(REFRESH, client.client_id, username, scope, grant_id, now,
                                         rt_ttl), rt_ttl))
        found = await self.store.reuse_or_issue(grant_id, orjson.dumps(record), at_ttl, tokens)
        if username is not None:
            await self.store.link_user_grant(username, grant_id, max(at_ttl, rt_ttl))
        if found is None:
            self._remember(grant_id, client, access.token, refresh, at_ttl, now, now + at_ttl, epoch)
            return TokenResponse(access.token, at_ttl // 1000, scope,
                                 refresh.token if refresh else None)
        live, left_ms = found
        doc = orjson.loads(live)
        access = self.codec.derive(ACCESS, grant_id, doc["sa"], doc["k"])
        if access is None:
            return None
        refresh = self.codec.derive(REFRESH, grant_id, doc["sr"], doc["k"]) if "sr" in doc else None
        self._remember(grant_id, client, access.token, refresh, int(doc["l"]), now, now + left_ms,
                       epoch)
        return TokenResponse(access.token, left_ms // 1000, scope,
                             refresh.token if refresh else None)

    def _remember(self, grant_id: str, client: Client, access: str, refresh: Minted | None,
                  lifetime_ms: int, now: int, expires_at: int, epoch: int) -> None:
        """Keep a reuse answer unless an invalidation arrived while Redis was asked."""
        if not self.clients.live or epoch != self.clients.epoch:
            return
        until = expires_at - lifetime_ms // 2
        if now < until:
            self._reused.put(grant_id, _Reused(client.client_id, access,
                                               refresh.token if refresh else None, expires_at, until))

    async def issue_code(self, client: Client, username: str, scope: str, redirect_uri: str,
                         challenge: str | None, method: str | None) -> str:
        """RFC 6749 §4.1.2: a single-use code bound to client, user, scope, redirect and PKCE.

        The code opens its own grant: the tokens redeemed from it join that grant, so a replay
        can end all of them in the same hash slot.
        """
        ttl = self.settings.code_ttl * 1000
        grant_id = new_grant_id()
        code = self.codec.mint(CODE, grant_id)
        now = now_ms()
        record: dict[str, object] = {"k": CODE, "c": client.client_id, "u": username, "s": scope,
                                     "g": grant_id, "ru": redirect_uri, "iat": now, "exp": now + ttl}
        if challenge is not None:
            record["cc"] = challenge
            record["ccm"] = method or "plain"
        # Indexed in its grant and linked to the user like a token, so deleting the user
        # (the cascade over the user's grants) ends a code not yet redeemed, too.
        await self.store.issue(grant_id, [(keys.token(grant_id, code.digest), orjson.dumps(record), ttl)])
        await self.store.link_user_grant(username, grant_id, ttl)
        metrics.code_event("issued")
        return code.token

    async def redeem(self, client: Client, code: str, redirect_uri: str,
                     verifier: str | None) -> TokenResponse:
        """RFC 6749 §4.1.3 + RFC 7636 §4.6, in one script; a second redemption ends the grant."""
        parsed = self.codec.parse(code, CODE)
        if parsed is None:
            raise InvalidGrant("The authorization code is invalid, expired or already used.")
        with_refresh = "refresh_token" in client.grant_types
        at_ttl = self.access_ttl(client) * 1000
        rt_ttl = self.refresh_ttl(client) * 1000
        access = self.codec.mint(ACCESS, parsed.grant_id)
        refresh = self.codec.mint(REFRESH, parsed.grant_id)
        s256 = "" if verifier is None else pkce.s256(verifier)
        out = await self.store.redeem(parsed.grant_id, parsed.digest, access.digest, refresh.digest,
                                      client.client_id, redirect_uri, verifier or "", s256,
                                      at_ttl, rt_ttl, with_refresh)
        outcome = out[0]
        if outcome == "REPLAY":
            metrics.code_event("replayed")
        if outcome == "OK":
            metrics.code_event("redeemed")
            username, scope = out[1], out[2]
            await self.store.link_user_grant(username, parsed.grant_id,
                                             max(at_ttl, rt_ttl) if with_refresh else at_ttl)
            return TokenResponse(access.token, at_ttl // 1000, scope,
                                 refresh.token if with_refresh else None)
        raise InvalidGrant(_REDEEM_REFUSALS.get(outcome, _REDEEM_REFUSALS["UNKNOWN"]))

    async def refresh(self, client: Client, presented: str, scope: str | None) -> TokenResponse:
        """RFC 6749 §6 with rotation; a rotated token presented again ends the grant."""
        parsed = self.codec.parse(presented, REFRESH)
        if parsed is None:
            raise InvalidGrant("The refresh token is invalid, expired or revoked.")
        at_ttl = self.access_ttl(client) * 1000
        rt_ttl = self.refresh_ttl(client) * 1000
        access = self.codec.mint(ACCESS, parsed.grant_id)
        refresh = self.codec.mint(REFRESH, parsed.grant_id)
        out = await self.store.rotate(
            parsed.grant_id, parsed.digest, access.digest, refresh.digest, client.client_id,
            scope or "", at_ttl, rt_ttl, self.settings.refresh_grace * 1000)
        outcome = out[0]
        if outcome == "OK":
            if out[1]:
                # Rotation extends the grant's life; the user's grant set must follow it.
                await self.store.link_user_grant(out[1], parsed.grant_id, max(at_ttl, rt_ttl))
            return TokenResponse(access.token, at_ttl // 1000, out[2], refresh.token)
        if outcome == "SCOPE":
            raise InvalidScope("The requested scope exceeds the scope originally granted.")
        if outcome == "REUSED":
            metrics.refresh_reuse()
            raise InvalidGrant("The refresh token was already used; the grant has been revoked.")
        if outcome == "CLIENT":
            raise InvalidGrant("The refresh token was issued to another client.")
        raise InvalidGrant("The refresh token is invalid, expired or revoked.")
