"""`python -m bench run`: start (or attach to) the target, set up, measure the generator's
ceiling, load, and write the result."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import wrk as wrk_mod
from bench.admin import Http, secret_counters
from bench.http import host_port
from bench.loadgen import LoadConfig, LoadResult, measure_ceiling, run_load
from bench.results import (
    FORMAT,
    GENERATOR_BOUND_FRACTION,
    git_facts,
    machine_facts,
    now_stamp,
    summary_table,
    write_result,
)
from bench.scenarios import REFERENCE_SCENARIOS, Setup, Workload, reference_workload
from bench.services import (
    Proc,
    pin_self,
    service_settings,
    shown_settings,
    start_redis,
    start_reference,
    start_tokensvc,
)


@dataclass
class RunOptions:
    scenario: str = "client_credentials"
    duration: float = 30.0
    connections: int = 64
    rate: float | None = None
    url: str | None = None
    workers: int = 1
    wrk: bool = False
    wrk_threads: int = 1
    warmup: float = 3.0
    pin_server: str | None = None
    pin_client: str | None = None
    pin_redis: str | None = None
    settings: dict[str, str] = field(default_factory=dict)
    reference: str | None = None
    admin_key: str | None = None
    pool: int | None = None
    users: int | None = None
    mix: dict[str, int] | None = None
    mix_by_connection: bool = False
    ceiling_seconds: float = 3.0
    output: Path | None = None
    label: str | None = None
    quiet: bool = False
    keep: bool = False
    drain: float = 2.0
    write: bool = True
    profile: Path | None = None

    @property
    def reference_kind(self) -> str | None:
        if self.reference is not None:
            return self.reference
        if self.scenario == "static":
            return "static"
        if self.scenario == "noop":
            return "noredis"
        return None


def start_profiler(server: Proc, out: Path, seconds: float) -> subprocess.Popen[bytes]:
    """py-spy sampling the server (and its workers) for the load phase; a flame graph SVG, or
    speedscope JSON when `out` ends in .json."""
    binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(binary).exists():
        raise SystemExit("--profile needs py-spy: pip install -e '.[bench]'")
    fmt = "speedscope" if out.suffix == ".json" else "flamegraph"
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([binary, "record", "--pid", str(server.pid), "--subprocesses", "--nonblocking",
                             "--rate", "250", "--duration", str(max(1, round(seconds))),
                             "--format", fmt, "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _log(opts: RunOptions, message: str) -> None:
    if not opts.quiet:
        print(f"[bench] {message}", file=sys.stderr, flush=True)


def _cpu_snapshot(procs: dict[str, Proc]) -> dict[str, float]:
    snap = {name: proc.cpu_seconds() for name, proc in procs.items()}
    t = os.times()
    # wrk runs as a child: its CPU time is in the children's share once it has been waited for
    snap["generator"] = t.user + t.system + t.children_user + t.children_system
    return snap


async def _python_load(opts: RunOptions, host: str, port: int, workload: Workload) -> LoadResult:
    cfg = LoadConfig(host, port, connections=opts.connections, duration=opts.duration,
                     warmup=opts.warmup, rate=opts.rate, drain=opts.drain,
                     progress=None if opts.quiet else sys.stderr, name=workload.name)
    return await run_load(cfg, workload.source)


def _wrk_load(opts: RunOptions, url: str, workload: Workload, tmp: Path,
              notes: list[str]) -> tuple[dict[str, Any], str]:
    hostport = "{}:{}".format(*host_port(url))
    script = tmp / "bench.lua"
    script.write_text(wrk_mod.lua_script(workload, opts.wrk_threads, hostport, str(tmp / "requests.bin")))
    offset = 0
    if opts.warmup > 0:
        if workload.kind == "chain":
            notes.append("wrk: no separate warm-up for refresh chains (a second wrk run would "
                         "replay rotated refresh tokens)")
        else:
            _log(opts, f"wrk warm-up {opts.warmup:.0f} s")
            warm, _ = wrk_mod.run_wrk(url, str(script), opts.connections, opts.warmup, opts.wrk_threads,
                                      opts.pin_client, ["0"])
            offset = int(warm.get("requests", 0)) if workload.kind == "pool" else 0
    _log(opts, f"wrk {opts.duration:.0f} s, {opts.connections} connections, {opts.wrk_threads} thread(s)")
    return wrk_mod.run_wrk(url, str(script), opts.connections, opts.duration, opts.wrk_threads,
                           opts.pin_client, [str(offset)])


async def _ceiling(opts: RunOptions, tmp: Path) -> dict[str, Any] | None:
    """The generator against the raw responder (pinned like the server): its own limit."""
    if opts.ceiling_seconds <= 0:
        return None
    raw = start_reference(tmp, opts.pin_server, raw=True)
    try:
        host, port = host_port(raw.url)
        if opts.wrk:
            figures, _ = wrk_mod.run_wrk(raw.url + "/", None, opts.connections, opts.ceiling_seconds,
                                         opts.wrk_threads, opts.pin_client)
            throughput = float(figures.get("throughput", 0.0))
        else:
            throughput = await measure_ceiling(host, port, "/", opts.ceiling_seconds, opts.connections)
    finally:
        raw.stop()
    _log(opts, f"generator ceiling: {throughput:.0f} req/s")
    return {"throughput": throughput, "target": "raw asyncio responder (bench.reference --raw)",
            "seconds": opts.ceiling_seconds, "connections": opts.connections}


async def execute(opts: RunOptions, argv: list[str]) -> dict[str, Any]:
    """One run; returns the result document (also written under bench/results/)."""
    if opts.wrk and opts.rate is not None:
        raise SystemExit("--rate (open loop) needs the Python generator: wrk has no fixed-rate mode")
    if opts.wrk and opts.scenario == "mix":
        raise SystemExit("--wrk cannot run the mix (use the Python generator)")
    if opts.wrk and wrk_mod.find_wrk() is None:
        raise SystemExit("--wrk: wrk is not installed (Debian: apt-get install wrk)")
    started_at, stamp = now_stamp()
    ref_kind = opts.reference_kind
    notes: list[str] = []
    procs: dict[str, Proc] = {}
    setup: Setup | None = None
    settings_doc: dict[str, Any]
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tokensvc-bench-")))
        # -- the target ----------------------------------------------------------------
        if opts.url is None:
            if ref_kind is None:
                values = service_settings(opts.settings)
                redis = start_redis(tmp, opts.pin_redis)
                stack.callback(redis.stop)
                procs["redis"] = redis
                _log(opts, f"redis-server on {redis.url}")
                svc = start_tokensvc(tmp, redis.url, opts.workers, opts.pin_server, values)
                stack.callback(svc.stop)
                procs["server"] = svc
                url = svc.url
                admin_key: str | None = svc.extra["admin_key"]
                settings_doc = shown_settings(svc.settings)
                _log(opts, f"tokensvc on {url} ({opts.workers} worker(s))")
            else:
                redis_url = None
                if ref_kind == "redis":
                    redis = start_redis(tmp, opts.pin_redis)
                    stack.callback(redis.stop)
                    procs["redis"] = redis
                    redis_url = redis.url
                ref = start_reference(tmp, opts.pin_server, redis_url)
                stack.callback(ref.stop)
                procs["server"] = ref
                url = ref.url
                admin_key = None
                settings_doc = {"reference": ref_kind}
                _log(opts, f"reference app on {url}")
        else:
            url = opts.url.rstrip("/")
            admin_key = opts.admin_key or os.environ.get("TOKENSVC_ADMIN_KEY")
            settings_doc = {"note": "a running service given by --url; its settings are its own"}
            if ref_kind is not None:
                settings_doc = {"reference": ref_kind}
        host, port = host_port(url)
        # -- set-up ----------------------------------------------------------------------
        http = Http(url, admin_key)
        stack.callback(http.close)
        if ref_kind is not None:
            workload = reference_workload(ref_kind, f"{host}:{port}")
        else:
            setup = Setup(http, host, port, opts.connections, opts.users or opts.connections, opts.pool,
                          opts.warmup + opts.duration, opts.rate, log=lambda m: _log(opts, m))
            if opts.url is not None and not opts.keep:
                stack.callback(setup.cleanup)
            _log(opts, f"setting up {opts.scenario}")
            workload = await setup.prepare(opts.scenario, opts.mix, opts.mix_by_connection)
        # -- the generator's ceiling, then the load ----------------------------------------
        pin_self(opts.pin_client)
        ceiling = await _ceiling(opts, tmp)
        before_metrics = secret_counters(http) if ref_kind is None else None
        profiler = None
        if opts.profile is not None:
            if "server" not in procs:
                raise SystemExit("--profile needs a server the bench starts (not --url)")
            profiler = start_profiler(procs["server"], opts.profile, opts.warmup + opts.duration)
            notes.append(f"profiled with py-spy (sampling slows the server a little): {opts.profile}")
        cpu_before = _cpu_snapshot(procs)
        t0 = time.monotonic()
        wrk_output: str | None = None
        if opts.wrk:
            figures, wrk_output = _wrk_load(opts, url, workload, tmp, notes)
            summary, errors, labels, schedule, series = _from_wrk(figures)
            exhausted, stopped_early = False, None
        else:
            res = await _python_load(opts, host, port, workload)
            summary = {"requests": res.requests, "errors": res.errors, "throughput": res.throughput,
                       "duration": res.duration, "latency_ms": res.latency_ms,
                       "answered_after_window": res.after_window}
            errors = {"by_status": res.status, "by_oauth_error": res.oauth_errors,
                      "transport": res.transport_errors}
            labels, schedule, series = res.labels, res.schedule, res.series
            exhausted, stopped_early = res.exhausted, res.stopped_early_at
        wall = time.monotonic() - t0
        cpu_after = _cpu_snapshot(procs)
        if profiler is not None:
            try:
                profiler.wait(60)
            except subprocess.TimeoutExpired:
                profiler.terminate()
                profiler.wait(10)
        server_metrics: dict[str, float | None] | None = None
        if before_metrics is not None:
            await asyncio.sleep(1.2)  # every worker flushes its counts once a second
            after = secret_counters(http)
            if after is not None:
                delta = {k: after[k] - before_metrics[k] for k in after}
                lookups = delta["secret_cache_hits"] + delta["argon2_client_secret"]
                server_metrics = {**delta, "secret_cache_hit_rate":
                                  delta["secret_cache_hits"] / lookups if lookups else None}
    # -- the result ----------------------------------------------------------------------
    if exhausted and workload.kind in ("pool", "mix"):
        when = f" after {stopped_early:.1f} s" if stopped_early is not None else ""
        notes.append(f"the prepared pool ran out{when}; the run stopped there (raise --pool)")
    broken = getattr(workload.source, "broken", 0)
    if broken:
        notes.append(f"{broken} refresh chains broke on an error answer")
    if opts.url is None and ref_kind is None and "log_level" not in opts.settings:
        notes.append("service started with log_level=warning (no access log)")
    throughput = float(summary["throughput"])
    bound = bool(ceiling and throughput >= GENERATOR_BOUND_FRACTION * ceiling["throughput"])
    name = opts.label or (f"reference-{ref_kind}" if ref_kind else opts.scenario)
    if opts.workers != 1 and not opts.label:
        name += f"-w{opts.workers}"
    doc: dict[str, Any] = {
        "format": FORMAT,
        "name": name,
        "scenario": opts.scenario if ref_kind is None else f"reference-{ref_kind}",
        "started_at": started_at,
        "stamp": stamp,
        "command": " ".join(shlex.quote(a) for a in ["python", "-m", "bench", *argv]),
        "git": git_facts(),
        "machine": machine_facts(),
        "target": {"kind": "reference" if ref_kind else "tokensvc", "reference": ref_kind, "url": url,
                   "started_by_bench": opts.url is None, "workers": opts.workers},
        "settings": settings_doc,
        "pinning": {"server": opts.pin_server, "client": opts.pin_client, "redis": opts.pin_redis},
        "load": {"mode": "open" if opts.rate else "closed", "connections": opts.connections,
                 "rate": opts.rate, "duration": opts.duration, "warmup": opts.warmup},
        "generator": {"kind": "wrk" if opts.wrk else "python",
                      "threads": opts.wrk_threads if opts.wrk else 1},
        "ceiling": ceiling,
        "generator_bound": bound,
        "summary": summary,
        "errors": errors,
        "labels": labels,
        "schedule": schedule,
        "time_series": series,
        "server_metrics": server_metrics,
        "cpu": {k: (cpu_after[k] - cpu_before[k]) / wall for k in cpu_after} if wall > 0 else {},
        "workload": {"kind": workload.kind, **workload.info},
        "notes": notes,
    }
    if wrk_output is not None:
        doc["wrk_output"] = wrk_output
    if bound and ceiling is not None:
        notes.append(f"generator-bound: the service reached {throughput / ceiling['throughput']:.0%} of "
                     f"the generator's ceiling, so the figure may be the generator's")
    if opts.write:
        path = write_result(doc, opts.output)
        doc["path"] = str(path)
    return doc


def _from_wrk(figures: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any],
                                                  None, list[dict[str, float]]]:
    errs = figures.get("errors", {})
    n_errors = int(sum(errs.values()))
    summary = {"requests": int(figures.get("requests", 0)), "errors": n_errors,
               "throughput": float(figures.get("throughput", 0.0)),
               "duration": float(figures.get("duration", 0.0)),
               "latency_ms": figures.get("latency_ms", {})}
    errors = {"by_status": {"non_2xx_3xx": errs["non_2xx_3xx"]} if errs.get("non_2xx_3xx") else {},
              "by_oauth_error": {},
              "transport": {k: v for k, v in errs.items() if k != "non_2xx_3xx"}}
    return summary, errors, {}, None, []


def run_argv(opts: RunOptions) -> list[str]:
    """The `run` command line that repeats these options (what a suite run stores)."""
    out = ["run"]
    if opts.reference is not None:
        out += ["--reference", opts.reference]
    else:
        out += ["--scenario", opts.scenario]
    out += ["--duration", f"{opts.duration:g}", "--connections", str(opts.connections),
            "--warmup", f"{opts.warmup:g}"]
    if opts.rate is not None:
        out += ["--rate", f"{opts.rate:g}"]
    if opts.url is not None:
        out += ["--url", opts.url]
    if opts.workers != 1:
        out += ["--workers", str(opts.workers)]
    if opts.wrk:
        out += ["--wrk", "--wrk-threads", str(opts.wrk_threads)]
    for flag, value in (("--pin-server", opts.pin_server), ("--pin-client", opts.pin_client),
                        ("--pin-redis", opts.pin_redis)):
        if value is not None:
            out += [flag, value]
    for key, value in opts.settings.items():
        out += ["--set", f"{key}={value}"]
    if opts.pool is not None:
        out += ["--pool", str(opts.pool)]
    if opts.mix is not None:
        out += ["--mix", ",".join(f"{k}={v}" for k, v in opts.mix.items())]
    if opts.mix_by_connection:
        out += ["--mix-by", "connection"]
    if opts.profile is not None:
        out += ["--profile", str(opts.profile)]
    return out


def print_summary(doc: dict[str, Any]) -> None:
    print(summary_table(doc))
    if doc.get("path"):
        print(f"\nresult: {doc['path']}")


__all__ = ["REFERENCE_SCENARIOS", "RunOptions", "execute", "print_summary"]
