"""The deployment's registry of live workers: server keys agree across the fleet.

Each worker keeps an entry in one Redis hash, `tsv:{fleet}:workers`, refreshed every
`fleet_heartbeat` seconds and dropped after three silent beats (or at once on a clean stop):
`<expiry ms> <signing fingerprint> <accepted fingerprints, comma-separated>`. The key the
deployment signs with is also kept, without expiry, in `tsv:{fleet}:signing`.

- **Start-up check.** A new instance must accept every key a live worker signs with (or, with
  no worker live, the key last recorded): otherwise it would answer `{"active": false}` for
  every token of the others. It refuses to start, naming `TOKENSVC_SECRET_KEYS`.
- **Which key signs.** The first of this worker's keys that every live worker accepts. A key
  rotation is: put the new key first and roll the instances (they keep signing with the old
  key until the last instance without the new one is gone, then all switch within one beat),
  and drop the old key after the longest token lifetime. No token signed during the roll is
  refused anywhere.

Fingerprints (keyring.py) name keys without revealing them. One small pipeline per beat, off
the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import time
from dataclasses import dataclass

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from tokensvc.errors import StoreUnavailable
from tokensvc.keyring import Keyring

log = logging.getLogger("tokensvc.fleet")

WORKERS = "tsv:{fleet}:workers"
SIGNING = "tsv:{fleet}:signing"
MISSED_BEATS = 3


class KeyMismatch(Exception):
    """This instance's server keys would split the fleet; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Member:
    expires_ms: int
    signing: str
    accepted: frozenset[str]


def _decode(raw: bytes | str) -> Member | None:
    text = raw.decode() if isinstance(raw, bytes) else raw
    try:
        expires, signing, accepted = text.split(" ")
        return Member(int(expires), signing, frozenset(accepted.split(",")))
    except ValueError:
        return None


def mismatch_message(missing: set[str]) -> str:
    names = ", ".join(sorted(missing))
    return (f"TOKENSVC_SECRET_KEYS does not hold the server key this deployment signs tokens with "
            f"(fingerprint {names}, recorded in Redis under {WORKERS} and {SIGNING}): this "
            f"instance would refuse every token the others issue. Give every instance the "
            f"deployment's keys (to rotate, put a new key first and keep the old one after it until "
            f"the longest token lifetime has passed). To start the deployment afresh, making every "
            f"issued token invalid, delete the Redis key {SIGNING} while no instance runs.")


class Fleet:
    """This worker's membership: the start-up check, the heartbeat, the signing key choice."""

    def __init__(self, redis: aioredis.Redis, keyring: Keyring, heartbeat: float) -> None:
        # The registry's two keys are the fleet's own; it talks to Redis directly.
        self.redis = redis
        self.keyring = keyring
        self.heartbeat = heartbeat
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.joined = False
        self._stop = asyncio.Event()

    async def members(self) -> tuple[dict[str, Member], list[str], str | None]:
        """Live workers other than this one, the entries of workers that died without leaving,
        and the recorded signing key."""
        redis = self.redis
        async with redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(WORKERS)
            pipe.get(SIGNING)
            raw, recorded = await pipe.execute()
        now = int(time.time() * 1000)
        members: dict[str, Member] = {}
        stale: list[str] = []
        for field, value in raw.items():
            member = _decode(value)
            name = field.decode() if isinstance(field, bytes) else str(field)
            if member is None or member.expires_ms <= now:
                stale.append(name)
            elif name != self.worker_id:
                members[name] = member
        signing = recorded.decode() if isinstance(recorded, bytes) else recorded
        return members, stale, signing

    def check(self, members: dict[str, Member], recorded: str | None) -> None:
        """Raise KeyMismatch unless this worker accepts every key the deployment signs with."""
        signing = {m.signing for m in members.values()}
        if not signing and recorded:
            signing = {recorded}
        missing = signing - set(self.keyring.fingerprints)
        if missing:
            raise KeyMismatch(mismatch_message(missing))

    def choose(self, members: dict[str, Member]) -> int:
        """The first of this worker's keys that every live worker accepts."""
        for index, fp in enumerate(self.keyring.fingerprints):
            if all(fp in m.accepted for m in members.values()):
                return index
        log.error("no server key is accepted by every live worker; signing with the newest")
        return 0

    async def join(self) -> None:
        """The start-up check and the first beat; KeyMismatch refuses the start. Redis errors
        pass (StoreUnavailable): the worker serves 503 until Redis is back, and `run` joins."""
        try:
            members, stale, recorded = await self.members()
            self.check(members, recorded)
            await self._beat(members, stale)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(type(exc).__name__) from exc
        self.joined = True

    async def _beat(self, members: dict[str, Member] | None = None, stale: list[str] | None = None) -> None:
        if members is None or stale is None:
            members, stale, _ = await self.members()
            # Keys may have changed under a running worker only by operator error (a worker
            # started against the check's advice is already refused); say so loudly.
            signing = {m.signing for m in members.values()} - set(self.keyring.fingerprints)
            if signing:
                log.error("live workers sign with keys this worker does not accept: %s",
                          ", ".join(sorted(signing)))
        index = self.choose(members)
        if index != self.keyring.signing:
            log.info("signing with server key %s (fingerprint %s)", index + 1,
                     self.keyring.fingerprints[index])
        self.keyring.signing = index
        now = int(time.time() * 1000)
        entry = (f"{now + int(self.heartbeat * MISSED_BEATS * 1000)} "
                 f"{self.keyring.signing_fingerprint} {','.join(self.keyring.fingerprints)}")
        redis = self.redis
        async with redis.pipeline(transaction=False) as pipe:
            pipe.hset(WORKERS, self.worker_id, entry)
            if stale:
                pipe.hdel(WORKERS, *stale)
            pipe.set(SIGNING, self.keyring.signing_fingerprint)
            await pipe.execute()

    async def run(self) -> None:
        """Beat for the life of the worker; a worker that could not join at start joins here,
        and stops itself if its keys turn out not to match.

        It ends on `leave()`, not only on cancellation: a cancellation that lands inside a
        Redis command can come back as that command's error (redis-py's timeouts on Python
        3.11), and a stopping worker would then wait for a loop that never ends."""
        while not self._stop.is_set():
            try:
                if not self.joined:
                    await self.join()
                else:
                    await self._beat()
            except KeyMismatch as exc:
                log.critical("%s", exc)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            except Exception as exc:  # Redis down or slow: beat again later
                log.debug("fleet heartbeat failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.heartbeat)

    def stop(self) -> None:
        """End `run` at its next step."""
        self._stop.set()

    async def leave(self) -> None:
        """Drop this worker's entry at a clean stop, so the others need not wait it out."""
        self.stop()
        try:
            await self.redis.hdel(WORKERS, self.worker_id)
        except (RedisError, OSError):
            pass
