"""A Redis outage is logged once at its start, then as a summary at most every few seconds,
and once at its end, however many requests it refuses (one line per refused request flooded
the log: 25,732 lines in 5 s from one worker)."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis

from tests.conftest import ADMIN, AppFactory
from tests.support.redis_servers import RedisServer
from tokensvc.outage import OUTAGE

CC = {"grant_type": "client_credentials"}


async def test_an_outage_logs_its_start_a_summary_and_its_end(
        app_factory: AppFactory, redis_server: RedisServer, redis_db: redis.Redis,
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(OUTAGE, "summary_seconds", 0.5)
    async with app_factory() as http:
        client = (await http.post("/admin/clients", headers=ADMIN, json={"name": "x"})).json()
        data = {**CC, "client_id": client["client_id"], "client_secret": client["client_secret"]}
        caplog.set_level(logging.WARNING, logger="tokensvc")
        redis_server.stop()
        try:
            refused = 0
            for _ in range(3):  # three bursts, 0.3 s apart: more than 0.5 s in all
                answers = await asyncio.gather(*(http.post("/oauth/token", data=data) for _ in range(100)),
                                               *(http.post("/oauth/introspect", data={**data, "token": "x"})
                                                 for _ in range(50)))
                assert {resp.status_code for resp in answers} == {503}
                refused += len(answers)
                await asyncio.sleep(0.3)
        finally:
            redis_server.start()
        assert (await http.post("/oauth/token", data={**data, "client_secret": "wrong"})).status_code == 401
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("tokensvc")]
    starts = [line for line in lines if line.startswith("storage unavailable")]
    summaries = [line for line in lines if line.startswith("storage still unavailable")]
    ends = [line for line in lines if line.startswith("storage available again")]
    assert len(starts) == 1, lines
    assert 1 <= len(summaries) <= 2, lines
    assert len(ends) == 1 and f"{refused} requests were refused" in ends[0], lines
    assert len(lines) <= 6, lines  # not one per refused request
