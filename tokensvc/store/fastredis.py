"""A lean Redis client for the hot path, with automatic pipelining.

redis-py's asyncio client spends more time per command than Redis does: a pool checkout, a
retry wrapper, a timeout context and a parser object per call. The token endpoint sends one
command per request, so that overhead is most of its Redis cost. This client keeps one
connection per worker and writes every command issued in the same event-loop turn in one
`write` (so 64 concurrent requests cost a handful of syscalls and round trips, not 64);
replies are matched to callers in order, parsed by hiredis.

It is deliberately small: RESP2, GET/SET/EVALSHA-style commands with bytes or str replies,
AUTH and SELECT from the URL, TCP, TLS or a unix socket. Everything else keeps using redis-py.
Failures surface as redis-py's ConnectionError/TimeoutError, so the store maps them to
StoreUnavailable like any other Redis failure. A command waits at most `timeout` seconds: a
watchdog fails the connection (and every command on it) when the oldest reply is overdue,
rather than arming a timer per command.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError, ResponseError, TimeoutError

Arg = bytes | str | int | float


def _encode(args: tuple[Arg, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        else:
            data = repr(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Protocol(asyncio.Protocol):
    """One connection: replies resolve the oldest waiting command."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        # uvloop's transports are not asyncio.Transport subclasses, hence Any.
        self.transport: Any = None
        self.lost: Exception | None = None
        # Commands of this event-loop turn, written together by flush().
        self.buffer: list[bytes] = []
        self.flush_scheduled = False

    def flush(self) -> None:
        self.flush_scheduled = False
        data, self.buffer = b"".join(self.buffer), []
        if self.transport is not None and self.lost is None:
            self.transport.write(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.waiting
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            if not waiting:  # a reply nobody asked for: the stream is out of step
                self.fail(RedisConnectionError("unexpected reply from Redis"))
                return
            future, _ = waiting.popleft()
            if future.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(ResponseError(str(reply)))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    def fail(self, exc: Exception) -> None:
        self.lost = self.lost or exc
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()


class FastRedis:
    """Auto-pipelined commands on one connection; reconnects on the next command after a failure."""

    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        self.timeout = timeout
        self._unix = parts.path if parts.scheme == "unix" else None
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._ssl = ssl.create_default_context() if parts.scheme == "rediss" else None
        db = query.get("db", [""])[0] if self._unix else parts.path.lstrip("/")
        self._db = int(db) if db else 0
        self._password = unquote(parts.password) if parts.password else None
        self._username = unquote(parts.username) if parts.username else None
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        if self._unix is not None:
            _, proto = await loop.create_unix_connection(_Protocol, self._unix)
        else:
            _, proto = await loop.create_connection(_Protocol, self._host, self._port, ssl=self._ssl)
        # The handshake goes through the new connection before anyone else may use it.
        setup: list[tuple[Arg, ...]] = []
        if self._password is not None:
            setup.append(("AUTH", self._username, self._password) if self._username
                         else ("AUTH", self._password))
        if self._db:
            setup.append(("SELECT", self._db))
        try:
            for command in setup:
                future: asyncio.Future[Any] = loop.create_future()
                proto.waiting.append((future, time.monotonic()))
                proto.transport.write(_encode(command))
                await future
        except BaseException:
            # Refused or cut short by the timeout: the half-set-up connection must not linger.
            proto.fail(RedisConnectionError("Redis refused the connection set-up"))
            raise
        return proto

    async def _connection(self) -> _Protocol:
        if self._connecting is None:
            loop = asyncio.get_running_loop()
            self._connecting = loop.create_future()
            try:
                proto = await asyncio.wait_for(self._connect(), self.timeout)
            except Exception as exc:
                error = (TimeoutError("connecting to Redis timed out")
                         if isinstance(exc, asyncio.TimeoutError)
                         else RedisConnectionError(f"cannot connect to Redis: {exc}"))
                self._connecting.set_exception(error)
                self._connecting.exception()  # retrieved: waiters get it through their await
                self._connecting = None
                raise error from exc
            self._connecting.set_result(proto)
            self._connecting = None
            self._proto = proto
            self._arm_watchdog()
            return proto
        return await asyncio.shield(self._connecting)

    def _arm_watchdog(self) -> None:
        if self._watchdog is None:
            loop = asyncio.get_running_loop()
            self._watchdog = loop.call_later(self.timeout / 4, self._check)

    def _check(self) -> None:
        """Fail the connection when its oldest command has waited longer than the timeout."""
        self._watchdog = None
        proto = self._proto
        if proto is None or proto.lost is not None:
            return
        if proto.waiting and time.monotonic() - proto.waiting[0][1] > self.timeout:
            proto.fail(TimeoutError("Redis did not answer in time"))
            return
        self._arm_watchdog()

    async def execute(self, *args: Arg) -> Any:
        """Send one command and wait for its reply."""
        proto = self._proto
        if proto is None or proto.lost is not None:
            self._proto = None
            proto = await self._connection()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        proto.waiting.append((future, time.monotonic()))
        proto.buffer.append(_encode(args))
        if not proto.flush_scheduled:
            proto.flush_scheduled = True
            loop.call_soon(proto.flush)
        return await future

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._proto is not None:
            self._proto.fail(RedisConnectionError("client closed"))
            self._proto = None
