"""`python -m bench run`: start (or attach to) the target, set up, measure the generator's
ceiling, load, and write the result."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import kit, wrk as wrk_mod
from bench.admin import Http, secret_counters
from bench.http import host_port, is_https
from bench.loadgen import ConnectionCloseSource, LoadConfig, LoadResult, Source, measure_ceiling, run_load
from bench.results import (
    FORMAT,
    GENERATOR_BOUND_FRACTION,
    git_facts,
    machine_facts,
    now_stamp,
    summary_table,
    write_result,
)
from bench.scenarios import (
    DEFAULT_CLIENTS,
    FLEET_SCENARIOS,
    REFERENCE_SCENARIOS,
    RESOURCE_SCENARIOS,
    Setup,
    Workload,
    reference_workload,
)
from bench.services import (
    Proc,
    pin_self,
    service_settings,
    shown_settings,
    start_redis,
    start_reference,
    start_tokensvc,
)
from bench.tls import TlsFiles, make_certificate, unverified_context

# The argon2 cost a service started for the many-client scenarios gets unless --real-hash-cost
# (or --set) says otherwise: creating 20,000 clients at the default cost takes minutes. The
# PHC string of each hash carries its own parameters, so what is verified later runs at this
# cost too; see bench/README.md for why the measured path does not depend on it.
CHEAP_HASH_COST = {"password_time_cost": "1", "password_memory_cost": "1024"}
MANY_CLIENT_SCENARIOS = tuple(DEFAULT_CLIENTS)


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
    # many_clients, cold_start, scale_out: distinct clients (None: the scenario's default)
    clients: int | None = None
    real_hash_cost: bool = False
    tls: bool = False
    new_connection: bool = False
    # scale_out: when instance B is started, the closed-loop peak measurement on A, the
    # fraction of that peak sent open loop, and B's CPUs (None: the CPUs not in pin_server)
    join_at: float = 5.0
    peak_seconds: float = 5.0
    load_fraction: float = 0.7
    pin_second: str | None = None

    @property
    def reference_kind(self) -> str | None:
        if self.reference is not None:
            return self.reference
        if self.scenario == "static":
            return "static"
        if self.scenario == "noop":
            return "noredis"
        return None

    @property
    def fleet_size(self) -> int:
        return self.clients or DEFAULT_CLIENTS.get(self.scenario, DEFAULT_CLIENTS["many_clients"])


def check_options(opts: RunOptions) -> None:
    """Refuse combinations that cannot be measured, before anything is started."""
    if opts.wrk and opts.rate is not None:
        raise SystemExit("--rate (open loop) needs the Python generator: wrk has no fixed-rate mode")
    if opts.wrk and opts.scenario == "mix":
        raise SystemExit("--wrk cannot run the mix (use the Python generator)")
    if opts.wrk and (opts.tls or opts.new_connection or opts.scenario in FLEET_SCENARIOS):
        raise SystemExit("--tls, --new-connection-per-request, cold_start and scale_out need the "
                         "Python generator (not --wrk)")
    if opts.wrk and wrk_mod.find_wrk() is None:
        raise SystemExit("--wrk: wrk is not installed (Debian: apt-get install wrk)")
    if opts.new_connection and opts.rate is not None:
        raise SystemExit("--new-connection-per-request is closed loop only (no --rate): the "
                         "connect would be made before the due time and escape the latency")
    if opts.tls and opts.reference_kind is not None:
        raise SystemExit("--tls loads tokensvc only (the reference app is plain HTTP)")
    if opts.tls and opts.url is not None:
        raise SystemExit("--tls makes a certificate for a service the bench starts; for a running "
                         "HTTPS service give its https:// --url")
    if opts.scenario in FLEET_SCENARIOS and opts.url is not None:
        raise SystemExit(f"{opts.scenario} starts its own instances (no --url)")
    if opts.scenario in FLEET_SCENARIOS and opts.new_connection:
        raise SystemExit(f"{opts.scenario} loads over keep-alive connections "
                         "(no --new-connection-per-request)")
    if opts.scenario in FLEET_SCENARIOS and opts.profile is not None:
        raise SystemExit(f"--profile does not follow {opts.scenario}'s second instance; profile a plain run")
    if opts.scenario == "scale_out" and opts.join_at >= opts.duration:
        raise SystemExit("--join-at must come before the end of --duration")
    if opts.scenario in RESOURCE_SCENARIOS and (opts.url is not None or opts.tls
                                                or opts.reference is not None):
        raise SystemExit(f"{opts.scenario} starts tokensvc and the protected API itself and counts "
                         "both processes' CPU (no --url, --tls or --reference)")


def effective_settings(opts: RunOptions) -> tuple[dict[str, str], bool]:
    """The --set values plus, for the many-client scenarios, the cheap set-up hash cost (where
    --set does not name a cost and --real-hash-cost is not given); and whether it was applied."""
    settings = dict(opts.settings)
    if opts.scenario not in MANY_CLIENT_SCENARIOS or opts.real_hash_cost:
        return settings, False
    applied = {k: v for k, v in CHEAP_HASH_COST.items() if k not in settings}
    settings.update(applied)
    return settings, bool(applied)


def hash_cost_doc(values: dict[str, str], cheap: bool, real_flag: bool) -> dict[str, Any]:
    """What the result says about the argon2 cost the clients' secrets were hashed with."""
    return {"cheap_setup_cost": cheap, "real_hash_cost_flag": real_flag,
            "password_time_cost": values.get("password_time_cost", "service default"),
            "password_memory_cost": values.get("password_memory_cost", "service default")}


def client_tls(url: str, files: TlsFiles | None) -> ssl.SSLContext | None:
    """The generator's TLS context for the target: trusting the bench's own certificate, or
    (for an https:// --url) not verifying one it did not make."""
    if files is not None:
        return files.client_context()
    return unverified_context() if is_https(url) else None


def result_head(opts: RunOptions, argv: list[str], started_at: str, stamp: str, name: str,
                scenario: str) -> dict[str, Any]:
    """The keys every result starts with: what ran, where, from which commit."""
    return {
        "format": FORMAT,
        "name": name,
        "scenario": scenario,
        "started_at": started_at,
        "stamp": stamp,
        "command": " ".join(shlex.quote(a) for a in ["python", "-m", "bench", *argv]),
        "git": git_facts(),
        "machine": machine_facts(),
    }


def metrics_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    """Counter increases over the load, and the verified-secret cache hit rate."""
    delta: dict[str, float | None] = {k: after[k] - before.get(k, 0.0) for k in after}
    hits = delta.get("secret_cache_hits") or 0.0
    lookups = hits + (delta.get("argon2_client_secret") or 0.0)
    delta["secret_cache_hit_rate"] = hits / lookups if lookups else None
    return delta


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


def cpu_snapshot(procs: dict[str, Proc]) -> dict[str, float]:
    snap = {name: proc.cpu_seconds() for name, proc in procs.items()}
    t = os.times()
    # wrk runs as a child: its CPU time is in the children's share once it has been waited for
    snap["generator"] = t.user + t.system + t.children_user + t.children_system
    return snap


async def _python_load(opts: RunOptions, host: str, port: int, workload: Workload,
                       tls: ssl.SSLContext | None) -> LoadResult:
    cfg = LoadConfig(host, port, connections=opts.connections, duration=opts.duration,
                     warmup=opts.warmup, rate=opts.rate, drain=opts.drain,
                     progress=None if opts.quiet else sys.stderr, name=workload.name, tls=tls,
                     new_connection=opts.new_connection)
    source: Source = ConnectionCloseSource(workload.source) if opts.new_connection else workload.source
    return await run_load(cfg, source)


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


async def measure_generator_ceiling(opts: RunOptions, tmp: Path, tls: bool = False) -> dict[str, Any] | None:
    """The generator against the raw responder (pinned like the server): its own limit. Over
    TLS (its own throwaway certificate) and with a new connection per request when the run
    uses them: the responder then pays for its side of each handshake too, so the figure is
    the limit of the pair, a lower bound of the generator's own."""
    if opts.ceiling_seconds <= 0:
        return None
    files = make_certificate(tmp / "ceiling-tls") if tls else None
    raw = start_reference(tmp, opts.pin_server, raw=True, tls=files)
    try:
        host, port = host_port(raw.url)
        if opts.wrk:
            figures, _ = wrk_mod.run_wrk(raw.url + "/", None, opts.connections, opts.ceiling_seconds,
                                         opts.wrk_threads, opts.pin_client)
            throughput = float(figures.get("throughput", 0.0))
        else:
            throughput = await measure_ceiling(host, port, "/", opts.ceiling_seconds, opts.connections,
                                               tls=files.client_context() if files else None,
                                               new_connection=opts.new_connection)
    finally:
        raw.stop()
    _log(opts, f"generator ceiling: {throughput:.0f} req/s")
    target = "raw asyncio responder (bench.reference --raw)"
    if files is not None:
        target += " over TLS"
    if opts.new_connection:
        target += ", a new connection per request"
    return {"throughput": throughput, "target": target, "seconds": opts.ceiling_seconds,
            "connections": opts.connections, "tls": tls, "new_connection_per_request": opts.new_connection}


async def execute(opts: RunOptions, argv: list[str]) -> dict[str, Any]:
    """One run; returns the result document (also written under bench/results/)."""
    check_options(opts)
    if opts.scenario in FLEET_SCENARIOS:
        from bench.fleet import execute_fleet

        return await execute_fleet(opts, argv)
    started_at, stamp = now_stamp()
    ref_kind = opts.reference_kind
    notes: list[str] = []
    procs: dict[str, Proc] = {}
    setup: Setup | None = None
    settings_doc: dict[str, Any]
    hash_cost: dict[str, Any] | None = None
    tls_files: TlsFiles | None = None
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tokensvc-bench-")))
        # -- the target ----------------------------------------------------------------
        if opts.url is None:
            if ref_kind is None:
                wanted, cheap = effective_settings(opts)
                values = service_settings(wanted)
                if opts.scenario in MANY_CLIENT_SCENARIOS:
                    hash_cost = hash_cost_doc(values, cheap, opts.real_hash_cost)
                redis = start_redis(tmp, opts.pin_redis)
                stack.callback(redis.stop)
                procs["redis"] = redis
                _log(opts, f"redis-server on {redis.url}")
                if opts.tls:
                    tls_files = make_certificate(tmp / "tls")
                svc = start_tokensvc(tmp, redis.url, opts.workers, opts.pin_server, values, tls=tls_files)
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
        tls = client_tls(url, tls_files)
        if opts.url is not None and opts.scenario in MANY_CLIENT_SCENARIOS:
            hash_cost = {"cheap_setup_cost": False, "note": "a running service: its own hash cost"}
        # -- set-up ----------------------------------------------------------------------
        http = Http(url, admin_key, tls=tls)
        stack.callback(http.close)
        if ref_kind is not None:
            workload = reference_workload(ref_kind, f"{host}:{port}")
        else:
            setup = Setup(http, host, port, opts.connections, opts.users or opts.connections, opts.pool,
                          opts.warmup + opts.duration, opts.rate, fleet_size=opts.fleet_size, tls=tls,
                          log=lambda m: _log(opts, m))
            if opts.url is not None and not opts.keep:
                stack.callback(setup.cleanup)
            _log(opts, f"setting up {opts.scenario}")
            if opts.scenario in RESOURCE_SCENARIOS:
                # the load goes to the protected API, which checks tokens against the service
                workload, api = await kit.prepare(setup, opts.scenario, url, tmp, opts.pin_server)
                stack.callback(api.stop)
                procs["api"] = api
                url = api.url
                host, port = host_port(url)
                _log(opts, f"protected API on {url}")
            else:
                workload = await setup.prepare(opts.scenario, opts.mix, opts.mix_by_connection)
        # -- the generator's ceiling, then the load ----------------------------------------
        pin_self(opts.pin_client)
        ceiling = await measure_generator_ceiling(opts, tmp, tls is not None)
        before_metrics = secret_counters(http) if ref_kind is None else None
        kit_before = kit.api_stats(procs["api"]) if "api" in procs else None
        profiler = None
        if opts.profile is not None:
            if "server" not in procs:
                raise SystemExit("--profile needs a server the bench starts (not --url)")
            profiler = start_profiler(procs["server"], opts.profile, opts.warmup + opts.duration)
            notes.append(f"profiled with py-spy (sampling slows the server a little): {opts.profile}")
        cpu_before = cpu_snapshot(procs)
        t0 = time.monotonic()
        wrk_output: str | None = None
        if opts.wrk:
            figures, wrk_output = _wrk_load(opts, url, workload, tmp, notes)
            summary, errors, labels, schedule, series = _from_wrk(figures)
            exhausted, stopped_early = False, None
            opened = 0
        else:
            res = await _python_load(opts, host, port, workload, tls)
            summary = {"requests": res.requests, "errors": res.errors, "throughput": res.throughput,
                       "duration": res.duration, "latency_ms": res.latency_ms,
                       "answered_after_window": res.after_window}
            errors = {"by_status": res.status, "by_oauth_error": res.oauth_errors,
                      "transport": res.transport_errors}
            labels, schedule, series = res.labels, res.schedule, res.series
            exhausted, stopped_early = res.exhausted, res.stopped_early_at
            opened = res.connections_opened
        wall = time.monotonic() - t0
        cpu_after = cpu_snapshot(procs)
        kit_after = kit.api_stats(procs["api"]) if "api" in procs else None
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
                server_metrics = metrics_delta(before_metrics, after)
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
    if opts.tls or tls is not None:
        notes.append("TLS: " + ("a new connection, and a full TLS handshake, per request"
                                if opts.new_connection else "keep-alive connections (one handshake each, "
                                "before the load)"))
    elif opts.new_connection:
        notes.append("a new TCP connection per request (Connection: close)")
    if hash_cost is not None and hash_cost.get("cheap_setup_cost"):
        notes.append("clients' secrets hashed at a cheap argon2 cost for set-up (t=1, m=1 MiB; "
                     "--real-hash-cost for the service's own)")
    doc: dict[str, Any] = {
        **result_head(opts, argv, started_at, stamp, name,
                      opts.scenario if ref_kind is None else f"reference-{ref_kind}"),
        "target": {"kind": "reference" if ref_kind else "tokensvc", "reference": ref_kind, "url": url,
                   "started_by_bench": opts.url is None, "workers": opts.workers},
        "settings": settings_doc,
        "pinning": {"server": opts.pin_server, "client": opts.pin_client, "redis": opts.pin_redis},
        "load": {"mode": "open" if opts.rate else "closed", "connections": opts.connections,
                 "rate": opts.rate, "duration": opts.duration, "warmup": opts.warmup,
                 "tls": tls is not None, "new_connection_per_request": opts.new_connection,
                 "connections_opened": opened},
        "hash_cost": hash_cost,
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
    if kit_before is not None and kit_after is not None:
        doc["resource_kit"] = kit.per_core(opts.scenario, throughput, doc["cpu"], kit_before, kit_after,
                                           int(summary["requests"]))
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
    if opts.clients is not None:
        out += ["--clients", str(opts.clients)]
    if opts.real_hash_cost:
        out.append("--real-hash-cost")
    if opts.tls:
        out.append("--tls")
    if opts.new_connection:
        out.append("--new-connection-per-request")
    if opts.scenario == "scale_out":
        out += ["--join-at", f"{opts.join_at:g}", "--peak-seconds", f"{opts.peak_seconds:g}",
                "--load-fraction", f"{opts.load_fraction:g}"]
        if opts.pin_second is not None:
            out += ["--pin-second", opts.pin_second]
    if opts.ceiling_seconds != 3.0:
        out += ["--ceiling-seconds", f"{opts.ceiling_seconds:g}"]
    return out


def print_summary(doc: dict[str, Any]) -> None:
    print(summary_table(doc))
    if doc.get("path"):
        print(f"\nresult: {doc['path']}")


__all__ = ["REFERENCE_SCENARIOS", "RunOptions", "execute", "print_summary"]
