"""Per-client usage for the admin console: tokens issued and failed authentications.

The hot path only bumps an in-process counter; a background task folds the counts into Redis
every few seconds (per-minute buckets in one hash per client, plus the clients' last-used
times). So the console's numbers add up every worker of every instance without one extra
Redis command per token request. Counts not yet flushed when a worker dies are lost; they
are a dashboard, not an audit trail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter

from tokensvc.errors import StoreUnavailable
from tokensvc.storage import UsageStorage

log = logging.getLogger("tokensvc.usage")
FLUSH_SECONDS = 5.0
# Keep a flush from growing without bound while Redis is away (and from random client ids).
MAX_PENDING = 100_000


class Usage:
    """Counts since the last flush; `issued`/`failed` are called on the hot path."""

    def __init__(self, store: UsageStorage, interval: float = FLUSH_SECONDS) -> None:
        self.store = store
        self.interval = interval
        self._issued: Counter[str] = Counter()
        self._failed: Counter[str] = Counter()

    def issued(self, client_id: str) -> None:
        if len(self._issued) < MAX_PENDING or client_id in self._issued:
            self._issued[client_id] += 1

    def failed(self, client_id: str) -> None:
        if len(self._failed) < MAX_PENDING or client_id in self._failed:
            self._failed[client_id] += 1

    async def flush(self) -> None:
        """Write what was counted; on a Redis failure keep it for the next try."""
        issued, failed = self._issued, self._failed
        if not issued and not failed:
            return
        self._issued, self._failed = Counter(), Counter()
        try:
            await self.store.record_usage(issued, failed, int(time.time() * 1000))
        except StoreUnavailable:
            self._issued.update(issued)
            self._failed.update(failed)

    async def run(self) -> None:
        """Flush every `interval` seconds for the life of the worker, and once more at the end."""
        try:
            while True:
                await asyncio.sleep(self.interval)
                await self.flush()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.flush())
