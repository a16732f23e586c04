"""argon2id for passwords and client secrets, always off the event loop.

A verification costs tens of milliseconds of CPU by design; run on the loop it would stall
every other request, so it runs in the default thread pool (argon2-cffi releases the GIL).
"""

from __future__ import annotations

import asyncio
import secrets
import time

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from tokensvc import metrics


class Hasher:
    """argon2id with the configured cost; defaults are OWASP's minimum (m=19 MiB, t=2, p=1)."""

    def __init__(self, time_cost: int, memory_cost: int, parallelism: int) -> None:
        self._ph = PasswordHasher(time_cost=time_cost, memory_cost=memory_cost,
                                  parallelism=parallelism, type=Type.ID)
        self._dummy: str | None = None

    def hash_sync(self, secret: str) -> str:
        return str(self._ph.hash(secret))

    async def hash(self, secret: str) -> str:
        return await asyncio.to_thread(self.hash_sync, secret)

    def _verify(self, encoded: str, secret: str) -> bool:
        try:
            return bool(self._ph.verify(encoded, secret))
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def verify(self, encoded: str, secret: str, kind: str = "password") -> bool:
        """One argon2 run in the thread pool; `kind` names it in the metrics."""
        start = time.perf_counter()
        try:
            return await asyncio.to_thread(self._verify, encoded, secret)
        finally:
            metrics.argon2_ran(kind, time.perf_counter() - start)

    async def verify_nobody(self, secret: str) -> None:
        """Spend one verification's time for an unknown user, so timing does not tell who exists."""
        if self._dummy is None:
            self._dummy = await self.hash(secrets.token_urlsafe(16))
        await self.verify(self._dummy, secret)

    async def prepare(self) -> None:
        """Compute the dummy hash at start-up rather than on the first unknown-user login."""
        if self._dummy is None:
            self._dummy = await self.hash(secrets.token_urlsafe(16))
