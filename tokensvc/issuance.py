"""The token writer every grant issues through: lifetimes, minting, and finAPI token reuse.

A grant's module owns its flow (grants/); what they share is here: how long tokens live, how a
lone token or a new grant is written, and, when the client asks for it, reuse: identical
requests are handed the same live tokens instead of new ones. Time is taken once per request;
records carry epoch milliseconds, while Redis TTLs are the authority on expiry.

An access token is opaque (tokens.py) or, for a client whose format is `jwt`, an RFC 9068 JWT
signed in memory (signing.py) and recorded under its jti (jwtaccess.py); everything else about
it (its record, grant, reuse, rotation, revocation) is the same.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from tokensvc.clients import ClientDirectory
from tokensvc.jwtaccess import access_claims, new_jti
from tokensvc.keyring import REUSED_TOKENS
from tokensvc.lru import LRU
from tokensvc.models import Client, TokenResponse
from tokensvc.settings import Settings
from tokensvc.signing import Signer
from tokensvc.storage import TokenStorage
from tokensvc.store import keys, records
from tokensvc.store.invalidation import grant_of
from tokensvc.tokens import (
    ACCESS,
    REFRESH,
    Minted,
    TokenCodec,
    derived_grant_id,
    digest,
    new_grant_id,
    new_seed,
)


@dataclass(frozen=True, slots=True)
class _Reused:
    client_id: str
    access: str
    refresh: str | None
    expires_at: int
    until: int


@dataclass(frozen=True, slots=True)
class PendingAccess:
    """An access token settled before the script that writes its record: an opaque token, or
    a JWT's jti, signed once the script has said who and what the token is for."""

    token: str | None
    jti: str | None
    digest: str


def now_ms() -> int:
    return int(time.time() * 1000)


def token_type(jkt: str | None) -> str:
    """RFC 9449 §5.1: `DPoP` for a token bound to a proof's key, else RFC 6750's `Bearer`."""
    return "Bearer" if jkt is None else "DPoP"


def refresh_jkt(client: Client, jkt: str | None) -> str | None:
    """RFC 9449 §5: a public client's refresh token is bound to the DPoP key it was issued
    with; a confidential client's is bound to the client's own authentication instead."""
    return jkt if client.is_public else None


class TokenWriter:
    """Mints tokens for a client (and user) and persists them in the grant's hash slot."""

    def __init__(self, store: TokenStorage, codec: TokenCodec, clients: ClientDirectory,
                 settings: Settings, signer: Signer) -> None:
        self.store = store
        self.codec = codec
        self.clients = clients
        self.settings = settings
        self.signer = signer
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
        elif (grant_id := grant_of(name)) is not None:
            self._reused.pop(grant_id)
        else:  # a client changed or went: its reuse answers go too
            for gid in [g for g, r in self._reused.items() if r.client_id == name]:
                self._reused.pop(gid)

    def access_ttl(self, client: Client) -> int:
        return client.access_token_ttl or self.settings.access_token_ttl

    def refresh_ttl(self, client: Client) -> int:
        return client.refresh_token_ttl or self.settings.refresh_token_ttl

    def reuses(self, client: Client) -> bool:
        return self.settings.reuse_tokens if client.reuse_tokens is None else client.reuse_tokens

    def jwt(self, client: Client) -> bool:
        """RFC 9068 JWT access tokens for this client (its own choice, else the deployment's)."""
        return (client.access_token_format or self.settings.access_token_format) == "jwt"

    async def prepare(self, client: Client) -> None:
        """Before a JWT is promised: signing keys read recently enough, and published as long
        as this client's tokens live (signing.py). Nothing to ask Redis in the steady state."""
        ttl = self.access_ttl(client) * 1000
        if not self.signer.ready(ttl):
            await self.signer.prepare(ttl)

    def new_access(self, client: Client, grant_id: str) -> PendingAccess:
        """The access token a script is about to record (rotation, code redemption); a JWT
        needs `prepare` first, and `finish` after."""
        if self.jwt(client):
            jti = new_jti(grant_id)
            return PendingAccess(None, jti, digest(jti))
        access = self.codec.mint(ACCESS, grant_id)
        return PendingAccess(access.token, None, access.digest)

    def finish(self, pending: PendingAccess, client: Client, username: str | None, scope: str,
               aud: str | None, issued_ms: int, ttl_ms: int, jkt: str | None = None) -> str:
        """The token itself: the opaque one, or the JWT signed with what its record says."""
        if pending.token is not None:
            return pending.token
        # Type narrowing: new_access() gives a jti whenever it gives no token.
        assert pending.jti is not None  # noqa: S101
        return self.signer.sign(access_claims(self.settings.issuer_url, client.client_id, username,
                                              scope, aud, issued_ms, ttl_ms, pending.jti, jkt))

    async def _signed(self, client: Client, username: str | None, scope: str, aud: str | None,
                      grant_id: str, now: int, ttl_ms: int, jkt: str | None) -> tuple[str, str]:
        """A JWT access token, signed now, and the key of its record."""
        await self.prepare(client)
        pending = self.new_access(client, grant_id)
        token = self.finish(pending, client, username, scope, aud, now, ttl_ms, jkt)
        return token, keys.token(grant_id, pending.digest)

    async def _access(self, client: Client, username: str | None, scope: str, aud: str | None,
                      grant_id: str, now: int, ttl_ms: int, jkt: str | None) -> tuple[str, str]:
        """A new grant's access token, JWT or opaque as the client's format says, and the key
        of its record."""
        if self.jwt(client):
            return await self._signed(client, username, scope, aud, grant_id, now, ttl_ms, jkt)
        access = self.codec.mint(ACCESS, grant_id)
        return access.token, keys.token(grant_id, access.digest)

    async def lone(self, client: Client, scope: str, aud: str | None = None,
                   jkt: str | None = None) -> TokenResponse:
        """An access token for the client itself (for the audience `aud`, RFC 8707; bound to
        the DPoP key `jkt`, RFC 9449): nothing to index (the hot path: one SET)."""
        if self.reuses(client):
            reused = await self._reusable(client, None, scope, False, aud, jkt)
            if reused is not None:
                return reused
        at_ttl = self.access_ttl(client) * 1000
        grant_id = new_grant_id()
        now = now_ms()
        token, key = await self._access(client, None, scope, aud, grant_id, now, at_ttl, jkt)
        await self.store.put_token(
            key, records.encode_token(ACCESS, client.client_id, None, scope, grant_id, now, at_ttl,
                                      aud, jkt),
            at_ttl)
        return TokenResponse(token, at_ttl // 1000, scope, token_type=token_type(jkt))

    async def grant(self, client: Client, username: str, scope: str, with_refresh: bool,
                    aud: str | None = None, jkt: str | None = None) -> TokenResponse:
        """A new grant for a user: its access token (and refresh token), indexed in the grant
        and linked to the user, so deleting the user ends it. Both tokens carry the audience.
        With a DPoP key (`jkt`), the access token is bound to it, and so is a public client's
        refresh token (RFC 9449 §5)."""
        if self.reuses(client):
            reused = await self._reusable(client, username, scope, with_refresh, aud, jkt)
            if reused is not None:
                return reused
        at_ttl = self.access_ttl(client) * 1000
        rt_ttl = self.refresh_ttl(client) * 1000 if with_refresh else 0
        now = now_ms()
        grant_id = new_grant_id()
        token, key = await self._access(client, username, scope, aud, grant_id, now, at_ttl, jkt)
        written = [(key, records.encode_token(ACCESS, client.client_id, username, scope, grant_id,
                                              now, at_ttl, aud, jkt), at_ttl)]
        refresh: str | None = None
        if with_refresh:
            minted = self.codec.mint(REFRESH, grant_id)
            refresh = minted.token
            written.append((keys.token(grant_id, minted.digest),
                            records.encode_token(REFRESH, client.client_id, username, scope,
                                                 grant_id, now, rt_ttl, aud,
                                                 refresh_jkt(client, jkt)), rt_ttl))
        await self.store.issue(grant_id, written)
        await self.store.link_user_grant(username, grant_id, max(at_ttl, rt_ttl))
        return TokenResponse(token, at_ttl // 1000, scope, refresh, token_type(jkt))

    async def _reusable(self, client: Client, username: str | None, scope: str,
                        with_refresh: bool, aud: str | None,
                        jkt: str | None = None) -> TokenResponse | None:
        """finAPI reuse: identical requests meet on one derived grant and one reuse record.
        Identical means the same client, user, scope set and audience: a token for one resource
        server is never handed to a request for another.

        A JWT cannot be derived again (its signature is not deterministic), so the reuse record
        keeps the JWT itself, sealed under a server subkey (keyring.py): a copy of Redis still
        yields no usable token. JWT and opaque requests meet on different grants, so a client
        whose format changes gets a token of its new format.

        A DPoP-bound request (RFC 9449) meets only requests bound to the same key: the key's
        thumbprint is part of the derived grant id, so it is never handed a bearer token or a
        token bound to another key, and a bearer request never gets a bound one.

        None only when the live token was derived or sealed under a server key that is no
        longer configured; the caller then issues an ordinary token.
        """
        at_ttl = self.access_ttl(client) * 1000
        rt_ttl = self.refresh_ttl(client) * 1000
        now = now_ms()
        parts = (client.client_id, username or "", scope)
        jwt = self.jwt(client)
        kind = token_type(jkt)
        if jkt is not None:
            grant_id = derived_grant_id("reuse-dpop-jwt" if jwt else "reuse-dpop", *parts,
                                        aud or "", jkt)
        elif jwt:
            grant_id = derived_grant_id("reuse-jwt", *parts, aud or "")
        else:
            grant_id = derived_grant_id("reuse", *parts, aud) if aud else derived_grant_id("reuse", *parts)
        cached = self._reused.get(grant_id) if self.clients.live else None
        if cached is not None:
            if now < cached.until:
                return TokenResponse(cached.access, (cached.expires_at - now) // 1000, scope,
                                     cached.refresh, kind)
            self._reused.pop(grant_id)
        epoch = self.clients.epoch
        keyring = self.codec.keyring
        at_seed: str | None = None
        sealed: str | None = None
        if jwt:
            access, at_key = await self._signed(client, username, scope, aud, grant_id, now, at_ttl,
                                                jkt)
            sealed = keyring.seal(REUSED_TOKENS, access.encode("ascii"), grant_id.encode())
        else:
            at_seed = new_seed()
            derived = self.codec.derive(ACCESS, grant_id, at_seed)
            # Type narrowing: derive() without a key id uses the signing key, which always exists.
            assert derived is not None  # noqa: S101
            access, at_key = derived.token, keys.token(grant_id, derived.digest)
        tokens = [(at_key, records.encode_token(ACCESS, client.client_id, username, scope,
                                                grant_id, now, at_ttl, aud, jkt), at_ttl)]
        refresh: Minted | None = None
        rt_seed: str | None = None
        if with_refresh:
            rt_seed = new_seed()
            refresh = self.codec.derive(REFRESH, grant_id, rt_seed)
            assert refresh is not None  # noqa: S101 -- as above: the signing key always exists
            tokens.append((keys.token(grant_id, refresh.digest),
                           records.encode_token(REFRESH, client.client_id, username, scope,
                                                grant_id, now, rt_ttl, aud,
                                                refresh_jkt(client, jkt)), rt_ttl))
        reuse = records.encode_reuse(at_ttl, at_key, at_seed, rt_seed, self.codec.key_id, sealed)
        found = await self.store.reuse_or_issue(grant_id, reuse, at_ttl, tokens)
        if username is not None:
            await self.store.link_user_grant(username, grant_id, max(at_ttl, rt_ttl))
        if found is None:
            self._remember(grant_id, client, access, refresh, at_ttl, now, now + at_ttl, epoch)
            return TokenResponse(access, at_ttl // 1000, scope, refresh.token if refresh else None,
                                 kind)
        live, left_ms = found
        lifetime, live_at_seed, live_rt_seed, key_id, live_sealed = records.decode_reuse(live)
        if live_sealed is not None:
            opened = keyring.unseal(REUSED_TOKENS, live_sealed, grant_id.encode())
            live_access = None if opened is None else opened.decode("ascii")
        else:
            derived = (None if live_at_seed is None
                       else self.codec.derive(ACCESS, grant_id, live_at_seed, key_id))
            live_access = None if derived is None else derived.token
        refresh = (None if live_rt_seed is None
                   else self.codec.derive(REFRESH, grant_id, live_rt_seed, key_id))
        if live_access is None or (live_rt_seed is not None and refresh is None):
            return None
        self._remember(grant_id, client, live_access, refresh, lifetime, now, now + left_ms, epoch)
        return TokenResponse(live_access, left_ms // 1000, scope, refresh.token if refresh else None,
                             kind)

    def _remember(self, grant_id: str, client: Client, access: str, refresh: Minted | None,
                  lifetime_ms: int, now: int, expires_at: int, epoch: int) -> None:
        """Keep a reuse answer unless an invalidation arrived while Redis was asked."""
        if not self.clients.live or epoch != self.clients.epoch:
            return
        until = expires_at - lifetime_ms // 2
        if now < until:
            self._reused.put(grant_id, _Reused(client.client_id, access,
                                               refresh.token if refresh else None, expires_at, until))
