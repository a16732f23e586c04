"""The load generator: asyncio (uvloop) protocols over HTTP/1.1 connections (plain or TLS).

Requests are prebuilt bytes handed out by a `Source`; responses are framed by
`bench.http.parse_response`; latencies are integers of microseconds kept per second of the
run. Two modes:

- closed loop: each of N connections sends its next request as soon as the previous
  answer has arrived, so throughput is what the service gives at concurrency N;
- open loop (`rate`): request i is due at start + i / rate, whatever happened before. A due
  request goes out on a free connection; with none free it waits in a backlog. Its latency
  is counted from the time it was *due*, so queueing in front of a slow service shows in
  the percentiles instead of being hidden (coordinated omission). The schedule accounting
  says how late the generator itself was (its timer and event loop) apart from that backlog.

Connections are keep-alive by default; `new_connection` opens one per request (closed loop),
which over TLS is one full handshake per request. Several backends can be loaded through a
client-side round-robin (`Load.add_backend`), and `trace` keeps each request's timing for
analyses finer than the per-second series (100 ms buckets, per-backend windows).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import ssl
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO, cast

import orjson

from bench.http import ProtocolError, Reply, build_request, parse_response, with_connection_close
from bench.stats import Histogram, latency_summary, percentile

NS = 1_000_000_000
# A scheduled request sent later than this after its due time, with a connection free for it,
# means the generator did not keep its schedule (uvloop's timers have 1 ms resolution).
GENERATOR_LATE_NS = 2_000_000
MIN_SLEEP_NS = 1_000_000

Request = tuple[bytes, str]


class Source(Protocol):
    """Hands out the next request (bytes and a label) for a connection; None when it has none."""

    def next(self, conn: int) -> Request | None: ...

    def reply(self, conn: int, label: str, reply: Reply) -> None: ...


class CycleSource:
    """The same prebuilt requests over and over (client_credentials, introspection...)."""

    def __init__(self, requests: Sequence[bytes], label: str) -> None:
        if not requests:
            raise ValueError("a cycle source needs at least one request")
        self.requests = list(requests)
        self.label = label
        self._next = itertools.cycle(self.requests).__next__

    def next(self, conn: int) -> Request | None:
        return self._next(), self.label

    def reply(self, conn: int, label: str, reply: Reply) -> None:
        pass


class PoolSource:
    """Each prebuilt request is sent once (a token to revoke, a code to redeem)."""

    def __init__(self, requests: Sequence[bytes], label: str) -> None:
        self.requests = list(requests)
        self.label = label
        self.used = 0

    def next(self, conn: int) -> Request | None:
        if self.used >= len(self.requests):
            return None
        data = self.requests[self.used]
        self.used += 1
        return data, self.label

    def reply(self, conn: int, label: str, reply: Reply) -> None:
        pass

    @property
    def exhausted(self) -> bool:
        return self.used >= len(self.requests)


class ChainSource:
    """Each connection carries its own chain: the answer gives the next request's value
    (refresh-token rotation: every response holds the refresh token for the next request).

    A broken chain (an error answer) takes a spare starting value; with none left that
    connection stops sending."""

    def __init__(self, starts: Sequence[str], build: Callable[[str], bytes],
                 extract: Callable[[Reply], str | None], label: str) -> None:
        self.build = build
        self.extract = extract
        self.label = label
        self.spares = list(starts)
        self.current: dict[int, str | None] = {}
        self.broken = 0

    def next(self, conn: int) -> Request | None:
        value = self.current.get(conn)
        if value is None:
            if not self.spares:
                return None
            value = self.current[conn] = self.spares.pop()
        return self.build(value), self.label

    def reply(self, conn: int, label: str, reply: Reply) -> None:
        value = self.extract(reply) if 200 <= reply.status < 300 else None
        if value is None:
            self.broken += 1
        self.current[conn] = value


class ConnectionCloseSource:
    """Another source's requests with `Connection: close`, for a new connection per request."""

    def __init__(self, inner: Source) -> None:
        self.inner = inner

    def next(self, conn: int) -> Request | None:
        item = self.inner.next(conn)
        if item is None:
            return None
        return with_connection_close(item[0]), item[1]

    def reply(self, conn: int, label: str, reply: Reply) -> None:
        self.inner.reply(conn, label, reply)


def json_field(name: str) -> Callable[[Reply], str | None]:
    def extract(reply: Reply) -> str | None:
        try:
            value = orjson.loads(reply.body).get(name)
        except (orjson.JSONDecodeError, AttributeError):
            return None
        return value if isinstance(value, str) else None

    return extract


class MixSource:
    """A weighted mix. By request (default): each connection walks a shuffled sequence of the
    parts, so every connection sends every kind. By connection (`connections` given): the
    weights split the connections, each of which sends one kind only (password logins on a
    few connections alongside issuance on the rest, neither waiting behind the other)."""

    def __init__(self, parts: Sequence[tuple[Source, int]], seed: int = 7,
                 connections: int | None = None) -> None:
        seq: list[int] = []
        for i, (_, weight) in enumerate(parts):
            seq.extend([i] * weight)
        if not seq:
            raise ValueError("a mix needs a positive weight")
        self.parts = [p for p, _ in parts]
        self.fixed: dict[int, int] | None = None
        if connections is not None:
            total = len(seq)
            bounds: list[float] = []
            acc = 0
            for _, weight in parts:
                acc += weight
                bounds.append(acc / total * connections)
            self.fixed = {}
            for conn in range(connections):
                self.fixed[conn] = next(i for i, b in enumerate(bounds) if conn + 0.5 <= b)
        # A reproducible request order for a given seed, not a secret.
        random.Random(seed).shuffle(seq)  # noqa: S311
        self.seq = seq
        self.pos: dict[int, int] = {}

    def next(self, conn: int) -> Request | None:
        if self.fixed is not None:
            return self.parts[self.fixed.get(conn, 0)].next(conn)
        pos = self.pos.get(conn, conn * 7919)
        for _ in range(len(self.seq)):
            part = self.parts[self.seq[pos % len(self.seq)]]
            pos += 1
            item = part.next(conn)
            if item is not None:
                self.pos[conn] = pos
                return item
        return None

    def reply(self, conn: int, label: str, reply: Reply) -> None:
        for part in self.parts:
            if getattr(part, "label", None) == label:
                part.reply(conn, label, reply)
                return


# -- recording ---------------------------------------------------------------------------


def oauth_error(body: bytes) -> str | None:
    """The OAuth `error` of an error body (RFC 6749 §5.2), if it is one."""
    if not body.startswith(b"{"):
        return None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    err = doc.get("error") if isinstance(doc, dict) else None
    return err if isinstance(err, str) else None


@dataclass
class Recorder:
    """Latencies (µs), statuses and errors of the requests started inside the window."""

    window_start: int
    window_end: int
    current: list[int] = field(default_factory=list)
    current_errors: int = 0
    latencies: array[int] = field(default_factory=lambda: array("q"))
    by_label: dict[str, array[int]] = field(default_factory=dict)
    errors_by_label: Counter[str] = field(default_factory=Counter)
    status: Counter[int] = field(default_factory=Counter)
    oauth_errors: Counter[str] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)
    series: list[dict[str, float]] = field(default_factory=list)
    hist: Histogram = field(default_factory=Histogram)
    in_window: int = 0
    errors_in_window: int = 0
    after_window: int = 0

    def record(self, started: int, done: int, status: int, label: str, body: bytes) -> None:
        if started < self.window_start:
            return
        us = (done - started) // 1000
        self.current.append(us)
        per_label = self.by_label.get(label)
        if per_label is None:
            per_label = self.by_label[label] = array("q")
        per_label.append(us)
        self.status[status] += 1
        ok = 200 <= status < 300
        if not ok:
            self.current_errors += 1
            self.errors_by_label[label] += 1
            err = oauth_error(body)
            if err is not None:
                self.oauth_errors[err] += 1
        if done <= self.window_end:
            self.in_window += 1
            if not ok:
                self.errors_in_window += 1
        else:
            self.after_window += 1

    def transport_error(self, kind: str, started: int) -> None:
        if started >= self.window_start:
            self.transport_errors[kind] += 1
            self.current_errors += 1

    def tick(self, second: int) -> dict[str, float]:
        """Close one second of the series; returns its point."""
        values = self.current
        self.current = []
        errors, self.current_errors = self.current_errors, 0
        self.latencies.extend(values)
        self.hist.add_all(values)
        values.sort()
        point = {"t": float(second), "requests": float(len(values)), "throughput": float(len(values)),
                 "errors": float(errors), "p50_ms": percentile(values, 50) / 1000.0,
                 "p99_ms": percentile(values, 99) / 1000.0,
                 "max_ms": (values[-1] if values else 0) / 1000.0}
        self.series.append(point)
        return point

    def flush(self) -> None:
        """Keep what arrived after the last tick (the drain) in the totals, not in the series."""
        self.latencies.extend(self.current)
        self.current = []


class Trace:
    """Every request of a run, in the order its answer (or its failure) arrived: when it
    started (µs after the load's start), how long it took (µs), which backend answered, and
    its HTTP status (0: the connection failed). About 20 bytes a request."""

    def __init__(self, t0_ns: int, backends: Sequence[str]) -> None:
        self.t0_ns = t0_ns
        self.backends = list(backends)
        self.start_us: array[int] = array("q")
        self.latency_us: array[int] = array("q")
        self.backend: array[int] = array("b")
        self.status: array[int] = array("h")

    def add(self, started_ns: int, latency_ns: int, backend: int, status: int) -> None:
        """`started_ns` is already relative to the load's start."""
        self.start_us.append(started_ns // 1000)
        self.latency_us.append(latency_ns // 1000)
        self.backend.append(backend)
        self.status.append(status)

    def __len__(self) -> int:
        return len(self.start_us)

    def done_us(self, i: int) -> int:
        return self.start_us[i] + self.latency_us[i]


@dataclass
class LoadResult:
    requests: int
    errors: int
    duration: float
    throughput: float
    latency_ms: dict[str, float]
    status: dict[str, int]
    oauth_errors: dict[str, int]
    transport_errors: dict[str, int]
    labels: dict[str, dict[str, Any]]
    series: list[dict[str, float]]
    schedule: dict[str, Any] | None
    exhausted: bool
    stopped_early_at: float | None
    after_window: int = 0
    connections_opened: int = 0
    trace: Trace | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests, "errors": self.errors, "duration": self.duration,
            "throughput": self.throughput, "latency_ms": self.latency_ms, "status": self.status,
            "oauth_errors": self.oauth_errors, "transport_errors": self.transport_errors,
            "labels": self.labels, "series": self.series, "schedule": self.schedule,
            "exhausted": self.exhausted, "stopped_early_at": self.stopped_early_at,
            "after_window": self.after_window, "connections_opened": self.connections_opened,
        }


# -- connections -------------------------------------------------------------------------


class _Driver(Protocol):
    def on_reply(self, conn: _Conn, reply: Reply) -> None: ...

    def on_lost(self, conn: _Conn, exc: Exception | None) -> None: ...


class _Conn(asyncio.Protocol):
    """One connection; frames responses and hands them to its driver."""

    def __init__(self, driver: _Driver, index: int, backend: int = 0) -> None:
        self.driver = driver
        self.index = index
        self.backend = backend
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.started = 0
        self.label = ""
        self.busy = False
        self.error: str | None = None
        self.gone = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while buf:
            try:
                reply = parse_response(buf)
            except ProtocolError as exc:
                self.error = f"protocol: {exc}"
                if self.transport is not None:
                    self.transport.close()
                return
            if reply is None:
                return
            del buf[:reply.consumed]
            self.driver.on_reply(self, reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.gone.done():
            self.gone.set_result(None)
        self.driver.on_lost(self, exc)

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


async def _connect(driver: _Driver, host: str, port: int, index: int, backend: int = 0,
                   tls: ssl.SSLContext | None = None) -> _Conn:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(lambda: _Conn(driver, index, backend), host, port, ssl=tls,
                                            server_hostname=host if tls is not None else None)
    return proto


@dataclass
class LoadConfig:
    host: str
    port: int
    connections: int = 64
    duration: float = 30.0
    warmup: float = 0.0
    rate: float | None = None
    drain: float = 2.0
    progress: TextIO | None = None
    name: str = "load"
    # TLS: the client context (None: plain HTTP).
    tls: ssl.SSLContext | None = None
    # Closed loop only: each request on a connection of its own (its connect, and over TLS its
    # handshake, counted in its latency); the requests must carry `Connection: close`.
    new_connection: bool = False
    # Keep every request's timing (Trace) for analyses finer than the per-second series.
    trace: bool = False


@dataclass
class _Backend:
    """One server behind the client-side round-robin front: its connections' free list and the
    due requests waiting for one of them (open loop)."""

    host: str
    port: int
    name: str
    free: list[_Conn] = field(default_factory=list)
    backlog: deque[int] = field(default_factory=deque)


class Load:
    """One load phase over one or more backends.

    With several backends (`add_backend`, possibly while the load runs), the generator itself
    is the front: in open loop each due request goes to the next backend in round-robin order,
    onto a free connection of that backend's pool or into that backend's own backlog, as a
    proxy with keep-alive upstream pools would do; in closed loop each connection keeps to its
    backend. A Python proxy in between would be the bottleneck of the measurement."""

    def __init__(self, cfg: LoadConfig, source: Source) -> None:
        if cfg.new_connection and cfg.rate is not None:
            raise ValueError("a new connection per request is a closed-loop mode (no --rate)")
        self.cfg = cfg
        self.source = source
        self.loop = asyncio.get_running_loop()
        self.conns: list[_Conn] = []
        self.backends: list[_Backend] = [_Backend(cfg.host, cfg.port, "A")]
        self.active: list[int] = [0]
        self.rr = 0
        self.running = False
        self.exhausted = False
        self.idle = asyncio.Event()
        self.done_early = asyncio.Event()
        self.started = asyncio.Event()
        self.stopped_at: int | None = None
        self.t0 = 0
        self.rec = Recorder(0, 0)
        self.trace: Trace | None = None
        # open-loop accounting (requests due inside the window)
        self.due = 0
        self.waited = 0
        self.backlogged = 0
        self.max_backlog = 0
        self.lag: list[int] = []
        self.reconnects = 0
        self.opened = 0
        # Reconnects under way: the run waits for them, so no connection outlives it.
        self.connecting: set[asyncio.Task[None]] = set()

    # -- sending -------------------------------------------------------------------------

    def send(self, conn: _Conn, started: int) -> bool:
        if conn.transport is None:
            return False
        item = self.source.next(conn.index)
        if item is None:
            self.exhausted = True
            if all(not c.busy for c in self.conns if c is not conn):
                self.done_early.set()
            return False
        conn.label = item[1]
        conn.started = started
        conn.busy = True
        conn.write(item[0])
        return True

    def on_reply(self, conn: _Conn, reply: Reply) -> None:
        now = time.perf_counter_ns()
        conn.busy = False
        self.rec.record(conn.started, now, reply.status, conn.label, reply.body)
        if self.trace is not None:
            self.trace.add(conn.started - self.t0, now - conn.started, conn.backend, reply.status)
        self.source.reply(conn.index, conn.label, reply)
        if not reply.keep_alive:
            if conn.transport is not None:
                conn.transport.close()
            return
        self.after(conn, now)

    def after(self, conn: _Conn, now: int) -> None:
        """A connection is free again: send its next request, or park it."""
        if not self.running:
            if not any(c.busy for c in self.conns):
                self.idle.set()
            return
        if self.cfg.rate is None:
            if not self.send(conn, now):
                self._check_done()
            return
        backend = self.backends[conn.backend]
        if backend.backlog:
            self.backlogged -= 1
            self.send(conn, backend.backlog.popleft())
        else:
            backend.free.append(conn)

    def _check_done(self) -> None:
        if self.exhausted and not any(c.busy for c in self.conns):
            self.done_early.set()

    def on_lost(self, conn: _Conn, exc: Exception | None) -> None:
        if conn.busy:
            conn.busy = False
            kind = conn.error or ("connection reset" if exc is not None else "connection closed")
            self.rec.transport_error(kind.split(":")[0], conn.started)
            if self.trace is not None:
                self.trace.add(conn.started - self.t0, time.perf_counter_ns() - conn.started,
                               conn.backend, 0)
        free = self.backends[conn.backend].free
        if conn in free:
            free.remove(conn)
        if self.running:
            self._spawn_reconnect(conn.index, conn.backend)
        elif not any(c.busy for c in self.conns):
            self.idle.set()

    def _spawn_reconnect(self, index: int, backend: int) -> None:
        task = self.loop.create_task(self._reconnect(index, backend))
        self.connecting.add(task)
        task.add_done_callback(self.connecting.discard)

    async def _reconnect(self, index: int, backend: int) -> None:
        target = self.backends[backend]
        begun = time.perf_counter_ns()
        try:
            fresh = await _connect(self, target.host, target.port, index, backend, self.cfg.tls)
        except OSError:
            self.rec.transport_error("connect", time.perf_counter_ns())
            await asyncio.sleep(0.1)
            if self.running:
                self._spawn_reconnect(index, backend)
            return
        if self.cfg.new_connection:
            self.opened += 1
        else:
            self.reconnects += 1
        self.conns[index] = fresh
        if self.running:
            # A new connection per request: that request's time starts before its connect.
            self.after(fresh, begun if self.cfg.new_connection else time.perf_counter_ns())
        elif fresh.transport is not None:
            fresh.transport.close()

    # -- backends --------------------------------------------------------------------------

    async def add_backend(self, host: str, port: int, connections: int, name: str | None = None) -> int:
        """Open a pool of `connections` to another server and put it into the round-robin
        rotation (one call at a time); returns its number (the Trace's backend)."""
        number = len(self.backends)
        self.backends.append(_Backend(host, port, name or chr(ord("A") + number)))
        base = len(self.conns)
        fresh = await asyncio.gather(*(_connect(self, host, port, base + i, number, self.cfg.tls)
                                       for i in range(connections)))
        self.conns.extend(fresh)
        self.active.append(number)
        now = time.perf_counter_ns()
        for conn in fresh:
            self.after(conn, now)
        return number

    # -- open-loop schedule ----------------------------------------------------------------

    async def schedule(self) -> None:
        assert self.cfg.rate is not None
        interval = NS / self.cfg.rate
        i = 0
        start = self.t0
        end = self.rec.window_end
        window_start = self.rec.window_start
        backends = self.backends
        active = self.active
        while self.running:
            now = time.perf_counter_ns()
            while True:
                due = start + int(i * interval)
                if due > now or due >= end:
                    break
                i += 1
                counted = due >= window_start
                if counted:
                    self.due += 1
                backend = backends[active[self.rr % len(active)]]
                self.rr += 1
                if backend.free:
                    if counted:
                        self.lag.append(now - due)
                    self.send(backend.free.pop(), due)
                else:
                    backend.backlog.append(due)
                    self.backlogged += 1
                    if counted:
                        self.waited += 1
                        if self.backlogged > self.max_backlog:
                            self.max_backlog = self.backlogged
            nxt = start + int(i * interval)
            if nxt >= end:
                return
            # uvloop's timers count whole milliseconds: a shorter sleep would spin the CPU, so
            # requests due within the next millisecond go out together (their lag is recorded).
            await asyncio.sleep(max(MIN_SLEEP_NS, nxt - time.perf_counter_ns()) / NS)

    # -- progress --------------------------------------------------------------------------

    async def ticker(self) -> None:
        out = self.cfg.progress
        second = 0
        window_start = self.rec.window_start
        warm_s = int((window_start - self.t0) // NS)
        for k in range(1, warm_s + 1):
            await asyncio.sleep(max(0, self.t0 + k * NS - time.perf_counter_ns()) / NS)
            if out is not None:
                print(f"[{self.cfg.name}] warm-up {k}/{warm_s} s", file=out, flush=True)
        seconds = max(1, round((self.rec.window_end - window_start) / NS))
        while second < seconds:
            second += 1
            target = window_start + second * NS
            await asyncio.sleep(max(0, target - time.perf_counter_ns()) / NS)
            point = self.rec.tick(second)
            if out is not None:
                so_far = self.rec.hist.percentile(99) / 1000.0
                backlog = f"  backlog {self.backlogged}" if self.cfg.rate is not None else ""
                pools = f"  backends {len(self.active)}" if len(self.backends) > 1 else ""
                print(f"[{self.cfg.name}] {second:4d} s  {point['throughput']:8.0f} req/s  "
                      f"errors {int(point['errors'])}  p99 {point['p99_ms']:.2f} ms "
                      f"(so far {so_far:.2f} ms){backlog}{pools}", file=out, flush=True)

    # -- the run ---------------------------------------------------------------------------

    async def run(self) -> LoadResult:
        cfg = self.cfg
        self.conns = list(await asyncio.gather(
            *(_connect(self, cfg.host, cfg.port, i, 0, cfg.tls) for i in range(cfg.connections))))
        self.t0 = time.perf_counter_ns()
        window_start = self.t0 + int(cfg.warmup * NS)
        window_end = window_start + int(cfg.duration * NS)
        self.rec = Recorder(window_start, window_end)
        if cfg.trace:
            self.trace = Trace(self.t0, [b.name for b in self.backends])
        self.running = True
        self.started.set()
        tasks: list[asyncio.Task[None]] = []
        if cfg.rate is None:
            for conn in self.conns:
                self.send(conn, self.t0)
        else:
            self.backends[0].free = list(reversed(self.conns))
            tasks.append(asyncio.create_task(self.schedule()))
        ticker = asyncio.create_task(self.ticker())
        early = asyncio.create_task(self.done_early.wait())
        remaining = max(0.0, (window_end - time.perf_counter_ns()) / NS)
        await asyncio.wait([early], timeout=remaining)
        early.cancel()
        if self.done_early.is_set():
            self.stopped_at = time.perf_counter_ns()
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            if self.rec.current:  # the partial second before the pool ran out
                self.rec.tick(len(self.rec.series) + 1)
        else:
            await ticker  # its last tick is due at the end of the window
        self.running = False
        for task in tasks:
            task.cancel()
        # Let the requests in flight finish (their latency counts; their completion is past the
        # window so not in the throughput), then close.
        if any(c.busy for c in self.conns):
            self.idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.wait(), cfg.drain)
        self.rec.flush()
        incomplete = sum(1 for c in self.conns if c.busy)
        await self._close_all()
        if self.trace is not None:
            self.trace.backends = [b.name for b in self.backends]
        return self.result(incomplete)

    async def _close_all(self) -> None:
        """Close every connection and wait until each is gone (a TLS close is a shutdown
        exchange), reconnects under way included: a transport left to the garbage collector
        after the run would be reset, not closed, and warned about."""
        if self.connecting:
            await asyncio.wait(set(self.connecting), timeout=self.cfg.drain)
            for task in set(self.connecting):
                task.cancel()
        conns = [c for c in self.conns if c.transport is not None]
        for conn in conns:
            assert conn.transport is not None
            conn.transport.close()
        if conns:
            await asyncio.wait([c.gone for c in conns], timeout=self.cfg.drain)
        for conn in conns:
            if conn.transport is not None:
                conn.transport.abort()

    def result(self, incomplete: int) -> LoadResult:
        rec = self.rec
        end = self.stopped_at if self.stopped_at is not None else rec.window_end
        duration = max(1e-9, (min(end, rec.window_end) - rec.window_start) / NS)
        labels: dict[str, dict[str, Any]] = {}
        for label, values in sorted(rec.by_label.items()):
            labels[label] = {"requests": len(values), "errors": rec.errors_by_label.get(label, 0),
                             "latency_ms": latency_summary(values)}
        schedule: dict[str, Any] | None = None
        if self.cfg.rate is not None:
            lag = sorted(self.lag)
            lag_p99 = percentile(lag, 99)
            unsent = sum(1 for b in self.backends for due in b.backlog if due >= rec.window_start)
            schedule = {
                "rate": self.cfg.rate,
                "due": self.due,
                "sent_on_time_connection": len(lag),
                "waited_for_connection": self.waited,
                "max_backlog": self.max_backlog,
                "unsent_at_end": unsent,
                "in_flight_at_end": incomplete,
                "generator_lag_ms": {"p50": percentile(lag, 50) / 1e6, "p99": lag_p99 / 1e6,
                                     "max": (lag[-1] if lag else 0) / 1e6},
                "generator_kept_schedule": lag_p99 <= GENERATOR_LATE_NS,
                "service_kept_up": self.waited == 0 and unsent == 0,
            }
        transport = dict(rec.transport_errors)
        if self.reconnects:
            transport["reconnects"] = self.reconnects
        stopped_early = None
        if self.stopped_at is not None:
            stopped_early = max(0.0, (self.stopped_at - rec.window_start) / NS)
        errors = rec.errors_in_window + sum(rec.transport_errors.values())
        return LoadResult(
            requests=rec.in_window,
            errors=errors,
            duration=duration,
            throughput=rec.in_window / duration,
            latency_ms=latency_summary(rec.latencies),
            status={str(k): v for k, v in sorted(rec.status.items())},
            oauth_errors=dict(rec.oauth_errors.most_common()),
            transport_errors=transport,
            labels=labels,
            series=rec.series,
            schedule=schedule,
            exhausted=self.exhausted,
            stopped_early_at=stopped_early,
            after_window=rec.after_window,
            connections_opened=self.opened,
            trace=self.trace,
        )


async def run_load(cfg: LoadConfig, source: Source) -> LoadResult:
    """Run one load phase (warm-up, then `duration` seconds measured)."""
    return await Load(cfg, source).run()


async def measure_ceiling(host: str, port: int, path: str = "/", seconds: float = 3.0,
                          connections: int = 64, tls: ssl.SSLContext | None = None,
                          new_connection: bool = False) -> float:
    """The generator's own throughput against a trivial endpoint (requests per second), over
    the same kind of connections as the run (TLS, a new connection per request)."""
    req = build_request("GET", path, f"{host}:{port}")
    if new_connection:
        req = with_connection_close(req)
    cfg = LoadConfig(host, port, connections=connections, duration=seconds, warmup=0.5,
                     progress=None, name="ceiling", tls=tls, new_connection=new_connection)
    result = await run_load(cfg, CycleSource([req], "ceiling"))
    return result.throughput


# -- fetch a batch (set-up) --------------------------------------------------------------


class _Batch:
    """Sends a list of requests over a few connections and keeps every reply in order."""

    def __init__(self, requests: Sequence[bytes], progress: Callable[[int], None] | None = None,
                 every: int = 1000) -> None:
        self.requests = requests
        self.replies: list[Reply | None] = [None] * len(requests)
        self.pending: dict[int, int] = {}
        self.next_index = 0
        self.done = asyncio.get_running_loop().create_future()
        self.left = len(requests)
        self.failure: str | None = None
        self.progress = progress
        self.every = max(1, every)

    def feed(self, conn: _Conn) -> None:
        if self.next_index >= len(self.requests):
            return
        i = self.next_index
        self.next_index += 1
        self.pending[conn.index] = i
        conn.busy = True
        conn.write(self.requests[i])

    def on_reply(self, conn: _Conn, reply: Reply) -> None:
        conn.busy = False
        i = self.pending.pop(conn.index)
        self.replies[i] = reply
        self.left -= 1
        if self.progress is not None and (len(self.requests) - self.left) % self.every == 0:
            self.progress(len(self.requests) - self.left)
        if self.left == 0 and not self.done.done():
            self.done.set_result(None)
            return
        if reply.keep_alive:
            self.feed(conn)
        elif not self.done.done():
            self.done.set_exception(RuntimeError("the server closed a set-up connection"))

    def on_lost(self, conn: _Conn, exc: Exception | None) -> None:
        if conn.busy and not self.done.done():
            self.done.set_exception(RuntimeError(
                f"a set-up connection was lost ({conn.error or exc or 'closed by the server'})"))


async def fetch_all(host: str, port: int, requests: Sequence[bytes], connections: int = 16,
                    timeout: float = 600.0, tls: ssl.SSLContext | None = None,
                    progress: Callable[[int], None] | None = None, every: int = 1000) -> list[Reply]:
    """Send every request (closed loop over `connections`) and return the replies in order;
    `progress` is told the number answered every `every` answers."""
    if not requests:
        return []
    batch = _Batch(requests, progress, every)
    n = max(1, min(connections, len(requests)))
    conns = list(await asyncio.gather(*(_connect(batch, host, port, i, 0, tls) for i in range(n))))
    try:
        for conn in conns:
            batch.feed(conn)
        await asyncio.wait_for(batch.done, timeout)
    finally:
        for conn in conns:
            if conn.transport is not None:
                conn.transport.close()
    out = [r for r in batch.replies if r is not None]
    assert len(out) == len(requests)
    return out

