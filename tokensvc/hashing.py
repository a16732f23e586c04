"""argon2id for passwords and client secrets, always off the event loop.

A verification costs tens of milliseconds of CPU by design; run on the loop it would stall
every other request, so it runs in threads of its own (argon2-cffi releases the GIL). Off the
loop is not enough on a busy core: a burst of password logins would still take the CPU from
the loop. The argon2 threads therefore run at a lower scheduling priority (nice +10 on Linux),
so token issuance keeps its latency while logins get the CPU the loop leaves over.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from tokensvc import metrics


class Hasher:
    """argon2id with the configured cost; defaults are OWASP's minimum (m=19 MiB, t=2, p=1)."""

    def __init__(self, time_cost: int, memory_cost: int, parallelism: int, threads: int = 2) -> None:
        self._ph = PasswordHasher(time_cost=time_cost, memory_cost=memory_cost,
                                  parallelism=parallelism, type=Type.ID)
        self._dummy: str | None = None
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="argon2",
                                        initializer=_lower_priority)

    def hash_sync(self, secret: str) -> str:
        return str(self._ph.hash(secret))

    async def hash(self, secret: str) -> str:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.hash_sync, secret)

    def _verify(self, encoded: str, secret: str) -> bool:
        try:
            return bool(self._ph.verify(encoded, secret))
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def verify(self, encoded: str, secret: str, kind: str = "password") -> bool:
        """One argon2 run in the thread pool; `kind` names it in the metrics."""
        start = time.perf_counter()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, self._verify,
                                                                    encoded, secret)
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


def _lower_priority() -> None:
    """Runs in each argon2 thread: Linux schedules threads by their own nice value."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
