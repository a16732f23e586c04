"""`cold_start` and `scale_out`: a deployment that gains a process while its clients keep coming.

Both start a private redis-server and a first `tokensvc serve` (the deployment), create the
clients through its admin API and use each once (so a deployment-wide record of every
verified secret may exist), then start a NEW `tokensvc serve` process with the same Redis
URL, admin key and server keys (`TOKENSVC_SECRET_KEYS`), as an orchestrator would:

- `cold_start`: as soon as the new process answers `/healthz`, the generator loads it alone,
  closed loop, with the clients in turn. What a platform cares about is how fast it is
  useful: the time until its throughput reaches 90 % of its warm rate (100 ms buckets), its
  latency over the first 10 s, and how many argon2 runs it needed (its own `/metrics`).
- `scale_out`: the first instance (A) is loaded open loop at 70 % of its measured peak
  through a client-side round-robin; a few seconds in, instance B is started; once its
  `/healthz` answers, the round-robin gives it its share. What counts is how long from B's
  start command until it carries that share at a good latency.

The analyses are functions of the generator's per-request trace, so they can be checked on
synthetic data (tests/test_bench.py) and recomputed from nothing but the numbers kept.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import ssl
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.admin import Http, secret_counters
from bench.http import form_post, host_port
from bench.loadgen import CycleSource, Load, LoadConfig, LoadResult, Trace, run_load
from bench.results import GENERATOR_BOUND_FRACTION, now_stamp, write_result
from bench.runner import (
    RunOptions,
    client_tls,
    cpu_snapshot,
    effective_settings,
    hash_cost_doc,
    measure_generator_ceiling,
    metrics_delta,
    result_head,
)
from bench.scenarios import Setup
from bench.services import (
    Proc,
    StartError,
    free_port,
    parse_cpus,
    pin_self,
    service_settings,
    shown_settings,
    start_redis,
    start_tokensvc,
    wait_http_async,
)
from bench.stats import latency_summary
from bench.tls import TlsFiles, make_certificate

US = 1_000_000
# cold_start: throughput is counted in buckets this long (seconds); "reached" means a bucket at
# the fraction of the warm rate, with the mean of it and the next SUSTAIN_BUCKETS - 1 too.
BUCKET_S = 0.1
SUSTAIN_BUCKETS = 5
REACH_FRACTION = 0.9
EARLY_S = 10.0
WARM_S = 5.0
# The goals for a cold instance.
GOAL_TIME_TO_90_S = 2.0
GOAL_EARLY_P99_MS = 50.0
# scale_out: B "carries its share" in a window of WINDOW_S seconds when at least SHARE of the
# answers in it are B's and B's p99 in it is under SHARE_P99_MS; windows step by STEP_S.
WINDOW_S = 1.0
STEP_S = 0.1
SHARE = 0.4
SHARE_P99_MS = 15.0
# Each worker writes its metrics files at most once a second.
METRICS_FLUSH_S = 1.2


# -- analyses (pure functions of a trace) ---------------------------------------------------


def bucket_counts(trace: Trace, bucket_s: float, end_s: float, backend: int | None = None) -> list[int]:
    """Successful answers per bucket, by the time they arrived (from the load's start); only
    whole buckets before `end_s`."""
    width = round(bucket_s * US)
    n = int(end_s * US // width)
    counts = [0] * n
    start, lat, status, which = trace.start_us, trace.latency_us, trace.status, trace.backend
    for i in range(len(trace)):
        if not 200 <= status[i] < 300 or (backend is not None and which[i] != backend):
            continue
        k = (start[i] + lat[i]) // width
        if 0 <= k < n:
            counts[k] += 1
    return counts


def time_to_fraction(counts: Sequence[int], bucket_s: float, target_rate: float,
                     fraction: float = REACH_FRACTION, sustain: int = SUSTAIN_BUCKETS) -> float | None:
    """When throughput first reached `fraction` of `target_rate`: the end of the first bucket
    that is at that rate and from which the mean of `sustain` buckets is too (a lucky bucket
    amid slow ones does not count); None if it never did."""
    if target_rate <= 0:
        return None
    threshold = fraction * target_rate * bucket_s
    for i, count in enumerate(counts):
        if count < threshold:
            continue
        window = counts[i:i + sustain]
        if sum(window) / len(window) >= threshold:
            return round((i + 1) * bucket_s, 6)
    return None


def latencies_started_in(trace: Trace, from_s: float, to_s: float, backend: int | None = None) -> list[int]:
    """Latencies (µs) of the requests started in [from_s, to_s), failures included (a failed
    request took its time too)."""
    lo, hi = from_s * US, to_s * US
    return [trace.latency_us[i] for i in range(len(trace))
            if lo <= trace.start_us[i] < hi and (backend is None or trace.backend[i] == backend)]


def analyse_cold_start(trace: Trace, clients: int, duration_s: float, bucket_s: float = BUCKET_S,
                       early_s: float = EARLY_S, warm_s: float | None = None) -> dict[str, Any]:
    """Time to 90 % of the warm rate, latency over the first seconds, from a cold process's trace.

    The warm rate is the rate over the last `warm_s` seconds of the run (default: 5 s, or a
    third of a shorter run), when the process has seen every client if at least `clients`
    requests were sent before that window (the clients go in turn)."""
    warm_s = min(WARM_S, duration_s / 3) if warm_s is None else warm_s
    counts = bucket_counts(trace, bucket_s, duration_s)
    n_warm = min(len(counts), max(1, round(warm_s / bucket_s)))
    warm_from = (len(counts) - n_warm) * bucket_s
    warm_buckets = counts[len(counts) - n_warm:]
    warm_rate = sum(warm_buckets) / (len(warm_buckets) * bucket_s) if warm_buckets else 0.0
    sent_before_warm = sum(1 for s in trace.start_us if s < warm_from * US)
    early_to = min(early_s, duration_s)
    early = latency_summary(latencies_started_in(trace, 0.0, early_to))
    reached = time_to_fraction(counts, bucket_s, warm_rate)
    first_rate = counts[0] / bucket_s if counts else 0.0
    return {
        "bucket_s": bucket_s,
        "warm_window_s": [round(warm_from, 3), round(len(counts) * bucket_s, 3)],
        "warm_rate": warm_rate,
        "every_client_seen_before_warm_window": sent_before_warm >= clients,
        "requests_before_warm_window": sent_before_warm,
        "time_to_90_s": reached,
        "first_bucket_rate": first_rate,
        "early_window_s": early_to,
        "early_latency_ms": early,
        "buckets": counts,
    }


def cold_start_goals(analysis: dict[str, Any], argon2_runs: float | None) -> list[dict[str, Any]]:
    reached = analysis["time_to_90_s"]
    p99 = analysis["early_latency_ms"]["p99"]
    return [
        {"goal": f">= 90 % of the warm rate within {GOAL_TIME_TO_90_S:g} s",
         "measured": None if reached is None else f"{reached:.1f} s",
         "met": reached is not None and reached <= GOAL_TIME_TO_90_S},
        {"goal": f"p99 < {GOAL_EARLY_P99_MS:g} ms over the first {analysis['early_window_s']:g} s",
         "measured": f"{p99:.2f} ms", "met": p99 < GOAL_EARLY_P99_MS},
        {"goal": "argon2 runs for client secrets on the new process: 0",
         "measured": None if argon2_runs is None else f"{argon2_runs:.0f}",
         "met": None if argon2_runs is None else argon2_runs == 0},
    ]


@dataclass(frozen=True)
class ShareWindow:
    start_s: float
    end_s: float
    share: float
    p99_ms: float
    requests: int
    backend_requests: int


def _sorted_by_arrival(trace: Trace) -> tuple[list[int], list[int]]:
    order = sorted(range(len(trace)), key=trace.done_us)
    return [trace.done_us(i) for i in order], order


def first_share_window(trace: Trace, backend: int, from_s: float, end_s: float,
                       window_s: float = WINDOW_S, step_s: float = STEP_S, share: float = SHARE,
                       p99_ms: float = SHARE_P99_MS) -> ShareWindow | None:
    """The first window [t, t + window_s), t = from_s, from_s + step_s, ..., in which `backend`
    gave at least `share` of the answers that arrived, with a p99 (of its requests whose
    answers arrived in it) under `p99_ms`."""
    arrivals, order = _sorted_by_arrival(trace)
    t = from_s
    while t + window_s <= end_s + 1e-9:
        lo = bisect.bisect_left(arrivals, round(t * US))
        hi = bisect.bisect_left(arrivals, round((t + window_s) * US))
        mine = sorted(trace.latency_us[order[k]] for k in range(lo, hi) if trace.backend[order[k]] == backend)
        total = hi - lo
        if total and mine and len(mine) / total >= share:
            p99 = latency_summary(mine)["p99"]
            if p99 < p99_ms:
                return ShareWindow(round(t, 6), round(t + window_s, 6), len(mine) / total, p99, total,
                                   len(mine))
        t += step_s
    return None


def per_backend_series(trace: Trace, end_s: float) -> list[dict[str, Any]]:
    """Per second (by arrival) and per backend: answers, errors, p50 and p99."""
    seconds = int(end_s)
    cells: list[dict[int, list[int]]] = [{} for _ in range(seconds)]
    errors: list[dict[int, int]] = [{} for _ in range(seconds)]
    for i in range(len(trace)):
        k = trace.done_us(i) // US
        if not 0 <= k < seconds:
            continue
        b = trace.backend[i]
        cells[k].setdefault(b, []).append(trace.latency_us[i])
        if not 200 <= trace.status[i] < 300:
            errors[k][b] = errors[k].get(b, 0) + 1
    out: list[dict[str, Any]] = []
    for k in range(seconds):
        point: dict[str, Any] = {"t": k + 1, "backends": {}}
        for b, values in sorted(cells[k].items()):
            lat = latency_summary(values)
            point["backends"][trace.backends[b] if b < len(trace.backends) else str(b)] = {
                "requests": len(values), "errors": errors[k].get(b, 0), "p50_ms": lat["p50"],
                "p99_ms": lat["p99"]}
        out.append(point)
    return out


def analyse_scale_out(trace: Trace, start_command_s: float, healthz_s: float | None, end_s: float,
                      backend: int = 1) -> dict[str, Any]:
    """B's start command to its /healthz, and to the first window in which it carries its
    share; per-backend series (times in seconds from the load's start)."""
    window = None if healthz_s is None else first_share_window(trace, backend, healthz_s, end_s)
    return {
        "start_command_s": start_command_s,
        "healthz_s": healthz_s,
        "start_to_healthz_s": None if healthz_s is None else round(healthz_s - start_command_s, 6),
        "share_window": None if window is None else window.__dict__,
        "start_to_share_s": None if window is None else round(window.end_s - start_command_s, 6),
        "share_rule": {"window_s": WINDOW_S, "step_s": STEP_S, "share": SHARE, "p99_ms": SHARE_P99_MS},
        "per_backend_series": per_backend_series(trace, end_s),
    }


# -- the runs -------------------------------------------------------------------------------


def _log(opts: RunOptions, message: str) -> None:
    if not opts.quiet:
        print(f"[{opts.scenario}] {message}", file=sys.stderr, flush=True)


def other_cpus(cpus: str | None) -> str | None:
    """The CPUs not in `cpus` (where a second instance goes); `cpus` itself when it has them all."""
    if cpus is None:
        return None
    total = set(range(os.cpu_count() or 1))
    rest = sorted(total - parse_cpus(cpus))
    return ",".join(str(c) for c in rest) if rest else cpus


def _summary(res: LoadResult) -> tuple[dict[str, Any], dict[str, Any]]:
    summary = {"requests": res.requests, "errors": res.errors, "throughput": res.throughput,
               "duration": res.duration, "latency_ms": res.latency_ms,
               "answered_after_window": res.after_window}
    errors = {"by_status": res.status, "by_oauth_error": res.oauth_errors,
              "transport": res.transport_errors}
    return summary, errors


@dataclass
class _Deployment:
    """What both scenarios share: Redis, instance A with the clients, how to start another."""

    tmp: Path
    redis: Proc
    first: Proc
    tls_files: TlsFiles | None
    tls: ssl.SSLContext | None
    creds: list[dict[str, str]]
    setup_seconds: float

    def second(self, opts: RunOptions, port: int, cpus: str | None) -> Proc:
        """Instance B: a new `tokensvc serve` with A's settings (same Redis URL, admin key and
        server keys), not waited for."""
        return start_tokensvc(self.tmp, self.redis.url, opts.workers, cpus, self.first.settings, port=port,
                              tls=self.tls_files, wait=False, name="tokensvc-b")

    def requests(self, hostport: str) -> list[bytes]:
        return [form_post("/oauth/token", hostport, {"grant_type": "client_credentials", **c})
                for c in self.creds]


async def _deploy(opts: RunOptions, stack: contextlib.ExitStack, values: dict[str, str]) -> _Deployment:
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tokensvc-fleet-")))
    files = make_certificate(tmp / "tls") if opts.tls else None
    redis = start_redis(tmp, opts.pin_redis)
    stack.callback(redis.stop)
    _log(opts, f"redis-server on {redis.url}")
    first = start_tokensvc(tmp, redis.url, opts.workers, opts.pin_server, values, tls=files,
                           name="tokensvc-a")
    stack.callback(first.stop)
    _log(opts, f"instance A on {first.url} ({opts.workers} worker(s))")
    tls = client_tls(first.url, files)
    http = Http(first.url, first.extra["admin_key"], tls=tls)
    stack.callback(http.close)
    host, port = host_port(first.url)
    setup = Setup(http, host, port, opts.connections, 1, None, 0.0, None, fleet_size=opts.fleet_size,
                  tls=tls, log=lambda m: _log(opts, m))
    started = time.perf_counter()
    creds = await setup.fleet(opts.fleet_size)
    return _Deployment(tmp, redis, first, files, tls, creds, time.perf_counter() - started)


async def _metrics_of(proc: Proc, tls: ssl.SSLContext | None) -> dict[str, float] | None:
    await asyncio.sleep(METRICS_FLUSH_S)
    http = Http(proc.url, proc.extra["admin_key"], tls=tls)
    try:
        return secret_counters(http)
    finally:
        http.close()


async def _cold_start(opts: RunOptions, dep: _Deployment, stack: contextlib.ExitStack,
                      notes: list[str]) -> dict[str, Any]:
    port = free_port()
    hostport = f"127.0.0.1:{port}"
    reqs = dep.requests(hostport)
    pin_self(opts.pin_client)
    ceiling = await measure_generator_ceiling(opts, dep.tmp, dep.tls is not None)
    procs = {"redis": dep.redis, "instance_a": dep.first}
    _log(opts, f"starting instance B on port {port} (it has never seen a client)")
    t_command = time.perf_counter()
    second = dep.second(opts, port, opts.pin_server)
    stack.callback(second.stop)
    t_health = await wait_http_async(second, "/healthz", timeout=120.0, tls=dep.tls)
    _log(opts, f"B answered /healthz {t_health - t_command:.2f} s after its start command; loading it")
    cfg = LoadConfig("127.0.0.1", port, connections=opts.connections, duration=opts.duration, warmup=0.0,
                     drain=opts.drain, progress=None if opts.quiet else sys.stderr, name=opts.scenario,
                     tls=dep.tls, trace=True)
    load = Load(cfg, CycleSource(reqs, "cold_start"))
    procs["server"] = second
    cpu_before = cpu_snapshot(procs)
    t_wall = time.monotonic()
    res = await load.run()
    wall = time.monotonic() - t_wall
    cpu_after = cpu_snapshot(procs)
    assert res.trace is not None
    analysis = analyse_cold_start(res.trace, len(reqs), opts.duration)
    metrics = await _metrics_of(second, dep.tls)
    server_metrics = None if metrics is None else metrics_delta({}, metrics)
    argon2 = None if metrics is None else metrics["argon2_client_secret"]
    analysis.update({
        "start_to_healthz_s": round(t_health - t_command, 6),
        "healthz_to_first_request_s": round(load.t0 / 1e9 - t_health, 6),
        "argon2_client_secret_runs": argon2,
        "secret_cache_hits": None if metrics is None else metrics["secret_cache_hits"],
    })
    analysis["goals"] = cold_start_goals(analysis, argon2)
    if not analysis["every_client_seen_before_warm_window"]:
        notes.append(f"only {analysis['requests_before_warm_window']} requests were sent before the warm "
                     f"window, fewer than the {len(reqs)} clients: the warm rate includes clients seen "
                     f"for the first time (raise --duration)")
    if opts.duration < EARLY_S:
        notes.append(f"the run is shorter than {EARLY_S:g} s: the early latency covers {opts.duration:g} s")
    summary, errors = _summary(res)
    bound = bool(ceiling and summary["throughput"] >= GENERATOR_BOUND_FRACTION * ceiling["throughput"])
    return {"ceiling": ceiling, "generator_bound": bound, "summary": summary, "errors": errors,
            "labels": res.labels, "schedule": res.schedule, "time_series": res.series,
            "server_metrics": server_metrics, "second_url": second.url,
            "cpu": {k: (cpu_after[k] - cpu_before[k]) / wall for k in cpu_after} if wall > 0 else {},
            "cold_start": analysis, "pin_second": opts.pin_server}


async def _scale_out(opts: RunOptions, dep: _Deployment, stack: contextlib.ExitStack,
                     notes: list[str]) -> dict[str, Any]:
    host, port_a = host_port(dep.first.url)
    # One Host for both backends, as behind a front that keeps the public one.
    reqs = dep.requests(f"{host}:{port_a}")
    pin_self(opts.pin_client)
    peak: dict[str, Any] | None = None
    rate = opts.rate
    if rate is None:
        _log(opts, f"measuring A's peak: {opts.peak_seconds:g} s closed loop after {opts.warmup:g} s warm-up")
        peak_res = await run_load(LoadConfig(host, port_a, connections=opts.connections,
                                             duration=opts.peak_seconds, warmup=opts.warmup, drain=opts.drain,
                                             name="peak", tls=dep.tls), CycleSource(reqs, "peak"))
        peak = {"throughput": peak_res.throughput, "latency_ms": peak_res.latency_ms,
                "errors": peak_res.errors, "seconds": opts.peak_seconds}
        rate = max(1.0, opts.load_fraction * peak_res.throughput)
        _log(opts, f"peak {peak_res.throughput:.0f} req/s; loading at {rate:.0f} req/s open loop")
    notes.append("no generator ceiling for scale_out: an open-loop run, whose schedule (generator lag) "
                 "says whether the generator kept up")
    port_b = free_port()
    pin_b = opts.pin_second or other_cpus(opts.pin_server)
    cfg = LoadConfig(host, port_a, connections=opts.connections, duration=opts.duration, warmup=0.0,
                     rate=rate, drain=opts.drain, progress=None if opts.quiet else sys.stderr,
                     name=opts.scenario, tls=dep.tls, trace=True)
    load = Load(cfg, CycleSource(reqs, "scale_out"))
    events: dict[str, float] = {}
    started: list[Proc] = []
    loop = asyncio.get_running_loop()

    async def join() -> None:
        await load.started.wait()
        t0 = load.t0 / 1e9
        await asyncio.sleep(max(0.0, t0 + opts.join_at - time.perf_counter()))
        events["start_command"] = time.perf_counter() - t0
        # spawning forks this process: off the event loop, so the schedule is kept meanwhile
        second = await loop.run_in_executor(None, dep.second, opts, port_b, pin_b)
        started.append(second)
        stack.callback(second.stop)
        healthy = await wait_http_async(second, "/healthz", timeout=120.0, tls=dep.tls)
        events["healthz"] = healthy - t0
        await load.add_backend("127.0.0.1", port_b, opts.connections, "B")
        events["in_rotation"] = time.perf_counter() - t0
        if not opts.quiet:
            print(f"[{opts.scenario}] B answered /healthz {healthy - t0 - events['start_command']:.2f} s "
                  f"after its start command; in the round-robin at {events['in_rotation']:.2f} s",
                  file=sys.stderr, flush=True)

    procs = {"redis": dep.redis, "server": dep.first}
    cpu_before = cpu_snapshot(procs)
    t_wall = time.monotonic()
    joiner = asyncio.create_task(join())
    res = await load.run()
    wall = time.monotonic() - t_wall
    if not joiner.done():
        joiner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await joiner
        notes.append("B did not join the round-robin before the end of the run")
    elif joiner.exception() is not None:
        raise StartError(f"instance B: {joiner.exception()}")
    if started:
        procs["instance_b"] = started[0]
    cpu_after = cpu_snapshot(procs)
    assert res.trace is not None
    analysis = analyse_scale_out(res.trace, events.get("start_command", opts.join_at), events.get("healthz"),
                                 opts.duration)
    analysis.update({"peak": peak, "rate": rate, "load_fraction": opts.load_fraction if opts.rate is None
                     else None, "join_at_s": opts.join_at, "in_rotation_s": events.get("in_rotation"),
                     "pin_a": opts.pin_server, "pin_b": pin_b})
    metrics_b = await _metrics_of(started[0], dep.tls) if started else None
    analysis["instance_b_metrics"] = metrics_b
    if analysis["start_to_share_s"] is None and started:
        notes.append(f"B never carried {SHARE:.0%} of the answers in a {WINDOW_S:g} s window with a "
                     f"p99 under {SHARE_P99_MS:g} ms")
    summary, errors = _summary(res)
    return {"ceiling": None, "generator_bound": False, "summary": summary, "errors": errors,
            "labels": res.labels, "schedule": res.schedule, "time_series": res.series,
            "server_metrics": metrics_b, "second_url": started[0].url if started else None,
            # B's share: all its CPU time since its start command, inside the run
            "cpu": {k: (cpu_after[k] - cpu_before.get(k, 0.0)) / wall for k in cpu_after} if wall > 0 else {},
            "scale_out": analysis, "pin_second": pin_b}


RUNS: dict[str, Callable[..., Any]] = {"cold_start": _cold_start, "scale_out": _scale_out}


async def execute_fleet(opts: RunOptions, argv: list[str]) -> dict[str, Any]:
    """One cold_start or scale_out run; the result document (also written under bench/results/)."""
    started_at, stamp = now_stamp()
    wanted, cheap = effective_settings(opts)
    values = service_settings(wanted)
    notes: list[str] = []
    if "log_level" not in opts.settings:
        notes.append("services started with log_level=warning (no access log)")
    if cheap:
        notes.append("clients' secrets hashed at a cheap argon2 cost for set-up (t=1, m=1 MiB; "
                     "--real-hash-cost for the service's own)")
    if opts.tls:
        notes.append("TLS: keep-alive connections (one handshake each, before the load)")
    if opts.scenario == "cold_start" and opts.warmup:
        notes.append("no warm-up: the point is the process's first seconds")
    with contextlib.ExitStack() as stack:
        dep = await _deploy(opts, stack, values)
        body = await RUNS[opts.scenario](opts, dep, stack, notes)
        settings_doc = shown_settings(dep.first.settings)
        first_url = dep.first.url
    doc: dict[str, Any] = {
        **result_head(opts, argv, started_at, stamp, opts.label or opts.scenario, opts.scenario),
        "target": {"kind": "tokensvc", "reference": None, "url": first_url, "second_url": body["second_url"],
                   "started_by_bench": True, "workers": opts.workers},
        "settings": settings_doc,
        "pinning": {"server": opts.pin_server, "second": body["pin_second"], "client": opts.pin_client,
                    "redis": opts.pin_redis},
        "load": {"mode": "open" if opts.scenario == "scale_out" else "closed",
                 "connections": opts.connections,
                 "rate": body["scale_out"]["rate"] if "scale_out" in body else None,
                 "duration": opts.duration, "warmup": 0.0, "tls": dep.tls is not None,
                 "new_connection_per_request": False},
        "hash_cost": hash_cost_doc(values, cheap, opts.real_hash_cost),
        "generator": {"kind": "python", "threads": 1},
        "workload": {"kind": "cycle", "clients": len(dep.creds), "each_used_once_before": True,
                     "setup_seconds": round(dep.setup_seconds, 1)},
        **{k: body[k] for k in ("ceiling", "generator_bound", "summary", "errors", "labels", "schedule",
                                "time_series", "server_metrics", "cpu")},
        opts.scenario: body[opts.scenario],
        "notes": notes,
    }
    if opts.write:
        doc["path"] = str(write_result(doc, opts.output))
    return doc
