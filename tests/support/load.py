"""Load from several OS processes at once: `burst` fires many concurrent requests, each
process running its share concurrently on asyncio, all starting at the same moment, so that the
service sees real races between connections rather than one client's sequence."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx

# (method, path, form data, Basic credentials or None)
Call = tuple[str, str, dict[str, str], tuple[str, str] | None]
# (status, JSON body or None)
Answer = tuple[int, Any]


def _fire(base_url: str, calls: Sequence[Call], start_at: float) -> list[Answer]:
    """In a pool process: wait for the common start time, then send every call at once."""

    async def run() -> list[Answer]:
        limits = httpx.Limits(max_connections=len(calls), max_keepalive_connections=len(calls))
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as http:
            # Open the connections before the start, so the requests themselves arrive together.
            await asyncio.gather(*(http.get("/healthz") for _ in calls))
            await asyncio.sleep(max(0.0, start_at - time.time()))

            async def one(call: Call) -> Answer:
                method, path, data, auth = call
                resp = await http.request(method, path, data=data, auth=auth)
                try:
                    body = resp.json()
                except ValueError:
                    body = None
                return resp.status_code, body

            return list(await asyncio.gather(*(one(call) for call in calls)))

    return asyncio.run(run())


@contextmanager
def process_pool(processes: int = 4) -> Iterator[ProcessPoolExecutor]:
    """Spawned (not forked) processes: the test process has threads and event loops."""
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        # Start every process now (imports included), not when the first burst is fired.
        list(pool.map(_ready, range(processes * 2)))
        yield pool


def _ready(_: int) -> bool:
    time.sleep(0.05)
    return True


def burst(pool: ProcessPoolExecutor, base_url: str, calls: Sequence[Call], processes: int = 4,
          delay: float = 1.0) -> list[Answer]:
    """Split `calls` over `processes` pool processes; all of them start `delay` s from now."""
    start_at = time.time() + delay
    shares = [list(calls[i::processes]) for i in range(processes)]
    futures = [pool.submit(_fire, base_url, share, start_at) for share in shares if share]
    return [answer for future in futures for answer in future.result(timeout=120)]
