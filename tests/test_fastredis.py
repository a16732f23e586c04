"""The hot path's auto-pipelining Redis client, against a real redis-server."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError, ResponseError, TimeoutError

from tests.support.redis_servers import RedisServer
from tokensvc.store.fastredis import FastRedis, _encode


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of its own, since these tests stop, freeze and password-protect it."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    if server.proc is not None:
        os.kill(server.proc.pid, signal.SIGCONT)
    server.stop()


def test_encoding_is_resp() -> None:
    assert _encode(("SET", b"k\r\n", 5, 1.5)) == b"*4\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$1\r\n5\r\n$3\r\n1.5\r\n"


async def test_concurrent_commands_share_writes_and_keep_their_order(redis_db: redis.Redis,
                                                                     redis_server: RedisServer) -> None:
    fast = FastRedis(redis_server.url, timeout=1.0)
    try:
        await asyncio.gather(*(fast.execute("SET", f"k{i}", f"v{i}") for i in range(500)))
        values = await asyncio.gather(*(fast.execute("GET", f"k{i}") for i in range(500)))
        assert values == [f"v{i}".encode() for i in range(500)]
        assert await fast.execute("GET", "missing") is None
        with pytest.raises(ResponseError):
            await fast.execute("INCR", "k1")  # not an integer: an error reply, not a broken stream
        assert await fast.execute("INCR", "counter") == 1
        assert redis_db.get("k499") == b"v499"
    finally:
        fast.close()


async def test_database_and_password_come_from_the_url(private_redis: RedisServer) -> None:
    with private_redis.sync() as admin:
        admin.config_set("requirepass", "s3cret")
    fast = FastRedis(f"redis://:s3cret@127.0.0.1:{private_redis.port}/3", timeout=1.0)
    try:
        await fast.execute("SET", "where", "db3")
        with redis.Redis(port=private_redis.port, password="s3cret", db=3) as db3, \
                redis.Redis(port=private_redis.port, password="s3cret", db=0) as db0:
            assert db3.get("where") == b"db3"
            assert db0.get("where") is None
    finally:
        fast.close()
    wrong = FastRedis(f"redis://:nope@127.0.0.1:{private_redis.port}/0", timeout=1.0)
    with pytest.raises(RedisConnectionError):
        await wrong.execute("PING")
    wrong.close()


async def test_a_hung_server_fails_within_the_timeout_and_a_restart_recovers(
        private_redis: RedisServer) -> None:
    fast = FastRedis(private_redis.url, timeout=0.3)
    try:
        assert await fast.execute("PING") == b"PONG"
        assert private_redis.proc is not None
        os.kill(private_redis.proc.pid, signal.SIGSTOP)
        started = time.monotonic()
        results = await asyncio.gather(*(fast.execute("GET", "x") for _ in range(20)),
                                       return_exceptions=True)
        elapsed = time.monotonic() - started
        assert all(isinstance(r, TimeoutError) for r in results), results
        assert elapsed < 0.3 * 2
        os.kill(private_redis.proc.pid, signal.SIGCONT)
        # The next command dials a new connection.
        assert await fast.execute("PING") == b"PONG"
        private_redis.stop()
        with pytest.raises(RedisConnectionError):
            await fast.execute("PING")
        private_redis.start()
        assert await fast.execute("PING") == b"PONG"
    finally:
        fast.close()
