"""RFC 9449 §7: DPoP-bound access tokens at the API, and the replay cache their proofs need.

The proof itself is checked by `tokensvc.dpop` (the module the service uses too): signature
with the key in its header, `htm`, `htu`, the `iat` window and `ath`. What is left here is
what only the API knows: the URL it is reached at, and which proofs it has already seen.

The replay cache is the kit's own, in the API's process. The kit runs inside an API that has
no Redis of tokensvc's (it imports nothing of the service's storage), so the default cache
cannot hold across processes: a proof replayed within its `iat` window to another process
of the same API passes the `jti` check there. It still has to be the same request (method,
URL), the same token (`ath`), within about a minute; TLS keeps a proof from being seen on the
wire in the first place. An API that runs many processes and wants the replay refused on all
of them hands the kit its own shared store (`replay=`, anything with `first_use`, e.g. Redis
SET NX PX), as tokensvc's own endpoints do with its Redis.
"""

from __future__ import annotations

import time
from typing import Protocol

from tokensvc.dpop import REPLAY_TTL_S, Proof, ProofError, check
from tokensvc.lru import LRU


class ReplayCache(Protocol):
    """Where an API remembers the proofs it accepted: True the first time `key` is offered,
    False while it is remembered (`ttl` seconds)."""

    async def first_use(self, key: str, ttl: float) -> bool: ...


class MemoryReplayCache:
    """The default: one process's proofs in a bounded LRU. Every entry lives the same `ttl`,
    so the least recently inserted is also the first to expire; `size` should exceed the
    proofs a process accepts in `REPLAY_TTL_S` seconds (100,000: over 1,400 a second),
    or an entry still live is dropped and its proof could pass again."""

    def __init__(self, size: int = 100_000) -> None:
        self._seen: LRU[str, float] = LRU(size)

    async def first_use(self, key: str, ttl: float) -> bool:
        now = time.monotonic()
        until = self._seen.peek(key)
        if until is not None and until > now:
            return False
        self._seen.put(key, now + ttl)
        return True

    def __len__(self) -> int:
        return len(self._seen)


class ProofVerifier:
    """Checks one request's proof for the API: `public_url` is where clients reach it (scheme,
    host and any prefix a proxy takes off; the request's own URL by default)."""

    def __init__(self, public_url: str | None, replay: ReplayCache) -> None:
        self.public_url = None if public_url is None else public_url.rstrip("/")
        self.replay = replay

    def url(self, own_url: str, path: str) -> str:
        """The `htu` a proof for this request must name."""
        return own_url if self.public_url is None else self.public_url + path

    def check(self, proofs: list[str], method: str, url: str, token: str) -> Proof:
        """RFC 9449 §4.3 and §7.1: one proof, for this method, URL and token."""
        if len(proofs) != 1:
            raise ProofError("Send exactly one DPoP header with the proof.")
        return check(proofs[0], method, url, access_token=token)

    async def spend(self, proof: Proof) -> None:
        """RFC 9449 §11.1: a proof is accepted once, for as long as its `iat` is."""
        if not await self.replay.first_use(proof.replay_key(), REPLAY_TTL_S):
            raise ProofError("The DPoP proof was already used (its jti is accepted once).")
