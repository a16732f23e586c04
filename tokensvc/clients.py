"""The client directory: cached client records and verified secrets, kept true across instances.

The hot path must not run argon2 for a secret that the deployment has already verified, nor
read the client from Redis on every request.

argon2 at most once per secret per deployment: beside its argon2 hash, a client record holds
a keyed verifier of the secret, HMAC-SHA256 under a subkey of the server key (keyring.py).
It is written with the hash when the secret is made or rotated (the server knows the secret
then), or after the first argon2 check of an older record, and only if the record still holds
the hash that was checked (client_swap.lua). Any worker of any instance, new or warm, then
checks a secret with one HMAC and a constant-time comparison. Safe at rest: the argon2 hash
stays the record of truth; the verifier is useless without the server key, which is never in
Redis; and a server-made secret has 256 random bits, so even with the key it cannot be
searched. Rotation and revocation rewrite or delete the record, verifier and hash together.
`argon2_per_worker` turns verifiers off: each worker then remembers the SHA-256 of the secret
that last passed argon2 on it, as before.

Each worker keeps client records in a least-recently-used cache (lru.py). Every change to a
client (rotation, edit, revocation) is published on a Redis channel; every instance drops that
client on the message. If the subscription is down, nothing is trusted from the cache: every
lookup goes to Redis until the subscription is back (and the cache starts empty again).

Failed secret checks are throttled per client, so a secret cannot be guessed at line rate.
Every secret check that is not answered from the cache first reserves a place in the client's
failure counter in Redis (`tsv:{c:<id>}:authfail`, a fixed window of
`client_auth_failure_window` seconds, one Lua script before argon2 runs); a check that succeeds
gives its place back, so only failures stay counted. Once failures reach
`client_auth_failure_limit`, uncached checks of that client are refused with 429 and
`Retry-After` (the seconds the window has left) without running argon2, on every instance,
since they all read the same counter. The worker that saw the limit reached also remembers it
in process, so until the window ends it refuses that client's uncached secrets without even
asking Redis.

The hot path is left alone on purpose: a secret that matches the verifier (or the digest this
worker already verified) is accepted without consulting any throttling state, in Redis or in
process. Only a caller that knows the real secret can match, so this costs nothing in security,
and it means an attacker's guesses lock out neither the legitimate client (whose secret is
cached on the instances it talks to) nor the hot path's throughput. A legitimate client whose
secret has no verifier yet (an older record, a retired server key) does have to wait for the
window to end. Unknown client ids and public clients never reach the counter, so
random ids create no keys.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from tokensvc import metrics
from tokensvc.errors import StoreUnavailable, Throttled
from tokensvc.hashing import Hasher
from tokensvc.keyring import Keyring
from tokensvc.lru import LRU
from tokensvc.models import Client
from tokensvc.storage import ClientStorage
from tokensvc.usage import Usage

if TYPE_CHECKING:
    from tokensvc.assertions import AssertionVerifier


def _refusal(seconds_left: float) -> Throttled:
    retry = max(1, math.ceil(seconds_left))
    return Throttled("Too many failed authentications for this client; retry later.",
                     {"Retry-After": str(retry)})


class _Entry:
    __slots__ = ("client", "verified")

    def __init__(self, client: Client) -> None:
        self.client = client
        self.verified: bytes | None = None


class ClientDirectory:
    """Client lookups and secret checks with a bounded, invalidated, per-worker cache."""

    def __init__(self, store: ClientStorage, hasher: Hasher, size: int, usage: Usage | None = None,
                 *, failure_limit: int = 20, failure_window: int = 60,
                 keyring: Keyring | None = None) -> None:
        self.store = store
        self.failure_limit = failure_limit
        self.failure_window_ms = failure_window * 1000
        # Client id -> monotonic time its throttling ends, for clients this worker saw reach
        # the limit: refused without a Redis round trip. Bounded like the cache.
        self._throttled: LRU[str, float] = LRU(size)
        self.usage = usage
        self.hasher = hasher
        # None: argon2 per worker (no verifiers read or written).
        self.keyring = keyring
        self.size = size
        self._entries: LRU[str, _Entry] = LRU(size)
        self._inflight: dict[tuple[str, bytes], asyncio.Future[bool]] = {}
        self._live = False
        self._epoch = 0
        self.argon2_runs = 0
        self.cache_hits = 0
        # Others that cache per client or per grant (the token writer's reuse cache) follow the
        # same invalidations: called with a client id, a "g:<grant id>" name, or None (all).
        self.on_forget: list[Callable[[str | None], None]] = []
        # RFC 7523 client assertions (services.py wires it): they check against the records
        # this directory hands out, with their own cache of each record's parsed keys.
        self.assertions: AssertionVerifier | None = None

    @property
    def live(self) -> bool:
        """True while invalidations are being received, so cached entries can be trusted."""
        return self._live

    @property
    def epoch(self) -> int:
        """Changes with every invalidation; a cache filled across a change must not keep it."""
        return self._epoch

    def _forget(self, client_id: str | None = None) -> None:
        self._epoch += 1
        if client_id is None:
            self._entries.clear()
        else:
            self._entries.pop(client_id)
        for forget in self.on_forget:
            forget(client_id)

    async def get(self, client_id: str) -> Client | None:
        """The client, from the cache when it can be trusted, else from Redis."""
        if self._live:
            entry = self._entries.get(client_id)
            if entry is not None:
                return entry.client
        epoch = self._epoch
        client = await self.store.get_client(client_id)
        # Cache only if no invalidation arrived while we read: else the record may be stale.
        if client is not None and self._live and epoch == self._epoch:
            entry = self._entries.peek(client_id)
            if entry is not None:
                # A concurrent read cached it first, as fresh as ours: keep that entry (and any
                # secret verified on it), and hand out its record so check_secret can match it.
                return entry.client
            self._entries.put(client_id, _Entry(client))
        return client

    async def check_secret(self, client: Client, secret: str) -> bool:
        """Constant-time check against the record's verifier (or, per worker, the digest this
        worker verified), else one argon2 run shared by concurrent callers."""
        if client.secret_hash is None:
            return False
        keyring = self.keyring
        if keyring is not None and client.secret_verifier is not None:
            # The verifier came with the record, which is as fresh as the hash beside it.
            if keyring.verifier_matches(client.secret_verifier, client.client_id, secret):
                self.cache_hits += 1
                metrics.secret_cache_hit()
                return True
        presented = hashlib.sha256(secret.encode("utf-8")).digest()
        entry = self._entries.peek(client.client_id) if self._live else None
        if (keyring is None and entry is not None and entry.client is client
                and entry.verified is not None and hmac.compare_digest(entry.verified, presented)):
            self.cache_hits += 1
            metrics.secret_cache_hit()
            return True
        # Not the verified secret: from here on, failures are counted and throttled.
        until = self._throttled.peek(client.client_id)
        if until is not None:
            left = until - time.monotonic()
            if left > 0:
                raise _refusal(left)
            self._throttled.pop(client.client_id)
        key = (client.client_id, presented)
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)  # shares that check's reservation and outcome
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            count, left_ms = await self.store.client_auth_attempt(
                client.client_id, self.failure_limit, self.failure_window_ms)
            if count < 0:
                self._remember_throttled(client.client_id, left_ms)
                raise _refusal(left_ms / 1000)
            self.argon2_runs += 1
            ok = await self.hasher.verify(client.secret_hash, secret, "client_secret")
            if ok:
                await self.store.client_auth_refund(client.client_id)
            elif count >= self.failure_limit:
                self._remember_throttled(client.client_id, left_ms)
            future.set_result(ok)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here, so an unawaited failure is not logged twice
            raise
        finally:
            del self._inflight[key]
        if ok:
            if keyring is not None:
                await self._add_verifier(client, keyring.secret_verifier(client.client_id, secret))
            else:
                entry = self._entries.peek(client.client_id) if self._live else None
                if entry is not None and entry.client is client:
                    entry.verified = presented
        return ok

    async def _add_verifier(self, client: Client, verifier: str) -> None:
        """After the argon2 check of a record without a (current) verifier: write one, so this
        was the deployment's last argon2 run for the secret. Best effort: a failure costs only
        another argon2 run later, never the request that just authenticated."""
        epoch = self._epoch
        try:
            updated = await self.store.add_secret_verifier(client, verifier)
        except StoreUnavailable:
            return
        if not self._live or epoch != self._epoch:
            return
        entry = self._entries.peek(client.client_id)
        if entry is not None and entry.client is client:
            if updated is None:
                # The record changed since this worker cached it (another worker wrote the
                # verifier first, say): read it afresh next time rather than run argon2 again.
                self._entries.pop(client.client_id)
            else:
                entry.client = updated

    def _remember_throttled(self, client_id: str, left_ms: int) -> None:
        self._throttled.put(client_id, time.monotonic() + left_ms / 1000)

    async def listen(self, url: str, timeout: float) -> None:
        """Follow the invalidation channel for the life of the worker (store/invalidation.py)."""
        await self.store.follow_invalidations(url, timeout, self)

    def subscribed(self) -> None:
        """Invalidations flow again: start afresh, since some may have been missed."""
        self._forget()
        self._live = True

    def forget(self, name: str) -> None:
        self._forget(name)

    def lost(self) -> None:
        """No invalidations can be heard: trust nothing cached until subscribed again."""
        self._live = False
        self._forget()
