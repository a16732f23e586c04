"""Result files (JSON under bench/results/), the summary table, and `compare`."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.services import ROOT, redis_version

FORMAT = "tokensvc-bench/1"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Keys every result file has (tests/test_bench.py checks them).
REQUIRED_KEYS = ("format", "name", "scenario", "started_at", "command", "git", "machine", "target",
                 "settings", "load", "generator", "ceiling", "generator_bound", "summary", "errors",
                 "time_series")
# Above this fraction of its measured ceiling, the generator, not the service, may be the limit.
GENERATOR_BOUND_FRACTION = 0.85


def git_facts(root: Path = ROOT) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10,
                                 check=False)
        except OSError:
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status),
            "branch": git("rev-parse", "--abbrev-ref", "HEAD")}


def cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine_facts() -> dict[str, Any]:
    versions: dict[str, str] = {}
    for mod in ("uvloop", "uvicorn", "starlette", "redis", "orjson", "httptools"):
        try:
            module = __import__(mod)
            versions[mod] = str(getattr(module, "__version__", "?"))
        except ImportError:
            continue
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "redis_server": redis_version(),
        "packages": versions,
    }


def now_stamp() -> tuple[str, str]:
    t = dt.datetime.now(dt.UTC)
    return t.isoformat(timespec="seconds"), t.strftime("%Y%m%dT%H%M%SZ")


def write_result(doc: Mapping[str, Any], path: Path | None = None) -> Path:
    if path is None:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = doc.get("stamp") or now_stamp()[1]
        path = RESULTS_DIR / f"{stamp}-{doc['name']}.json"
        n = 1
        while path.exists():
            n += 1
            path = RESULTS_DIR / f"{stamp}-{doc['name']}-{n}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return path


def load_result(path: str | Path) -> dict[str, Any]:
    doc = json.loads(Path(path).read_text())
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{path} is not a bench result ({FORMAT})")
    missing = [k for k in REQUIRED_KEYS if k not in doc]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}")
    return doc


# -- printing ----------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f} ms" if value < 100 else f"{value:.0f} ms"


def summary_table(doc: Mapping[str, Any]) -> str:
    s = doc["summary"]
    lat = s["latency_ms"]
    lines = [
        f"{doc['name']}: {doc['load']['mode']} loop, {doc['load']['connections']} connections"
        + (f", {doc['load']['rate']:.0f} req/s scheduled" if doc["load"].get("rate") else "")
        + f", {s['duration']:.1f} s measured ({doc['generator']['kind']} generator)",
        "",
        f"  throughput   {s['throughput']:10.0f} req/s   ({s['requests']} requests, {s['errors']} errors)",
        f"  latency      p50 {_ms(lat.get('p50'))}   p90 {_ms(lat.get('p90'))}   p99 {_ms(lat.get('p99'))}"
        f"   p99.9 {_ms(lat.get('p99_9'))}   max {_ms(lat.get('max'))}",
    ]
    ceiling = doc.get("ceiling") or {}
    if ceiling.get("throughput"):
        frac = s["throughput"] / ceiling["throughput"]
        flag = "  GENERATOR-BOUND: the generator, not the service, may be the limit" \
            if doc.get("generator_bound") else ""
        lines.append(f"  ceiling      {ceiling['throughput']:10.0f} req/s   "
                     f"(service at {frac:.0%} of it){flag}")
    errors = doc["errors"]
    if errors.get("by_status"):
        late = s.get("answered_after_window")
        extra = f"   ({late} answered after the window: in latency and statuses only)" if late else ""
        lines.append("  statuses     " + ", ".join(f"{k}: {v}" for k, v in errors["by_status"].items())
                     + extra)
    if errors.get("by_oauth_error"):
        lines.append("  OAuth errors " + ", ".join(f"{k}: {v}" for k, v in errors["by_oauth_error"].items()))
    if errors.get("transport"):
        lines.append("  transport    " + ", ".join(f"{k}: {v}" for k, v in errors["transport"].items()))
    labels = doc.get("labels") or {}
    if len(labels) > 1:
        lines.append("  by request:")
        for label, info in labels.items():
            ll = info["latency_ms"]
            lines.append(f"    {label:26s} {info['requests']:8d} req  {info['errors']:6d} err  "
                         f"p50 {_ms(ll['p50'])}  p99 {_ms(ll['p99'])}")
    sched = doc.get("schedule")
    if sched:
        lag = sched["generator_lag_ms"]
        lines.append(f"  schedule     {sched['due']} due, {sched['waited_for_connection']} waited for a "
                     f"connection (max backlog {sched['max_backlog']}), {sched['unsent_at_end']} unsent, "
                     f"generator lag p99 {lag['p99']:.2f} ms")
        if not sched["generator_kept_schedule"]:
            lines.append("  WARNING: the generator did not keep the schedule (its own lag p99 > 2 ms)")
        if not sched["service_kept_up"]:
            lines.append("  note: requests queued for a free connection; their latency counts from the "
                         "scheduled time")
    metrics = doc.get("server_metrics")
    if metrics and metrics.get("secret_cache_hit_rate") is not None:
        lines.append(f"  secret cache {metrics['secret_cache_hit_rate']:.4%} hits "
                     f"({metrics['secret_cache_hits']:.0f} hits, {metrics['argon2_client_secret']:.0f} "
                     f"argon2 runs for client secrets, {metrics['argon2_password']:.0f} for passwords)")
    cpu = doc.get("cpu") or {}
    if cpu:
        lines.append("  CPU          " + ", ".join(f"{k} {v:.0%}" for k, v in cpu.items()))
    workload = doc.get("workload") or {}
    if workload.get("clients"):
        lines.append(f"  clients      {workload['clients']} distinct, each used once before the load "
                     f"(set-up {workload.get('setup_seconds', 0):.0f} s)")
    opened = (doc.get("load") or {}).get("connections_opened")
    if opened:
        lines.append(f"  connections  {opened} opened during the load (one per request)")
    lines += _cold_start_lines(doc.get("cold_start")) + _scale_out_lines(doc.get("scale_out"))
    lines += _kit_lines(doc.get("resource_kit"))
    for note in doc.get("notes", []):
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def _kit_lines(kit: Mapping[str, Any] | None) -> list[str]:
    if not kit:
        return []
    per_cpu = kit.get("requests_per_cpu_second")
    cores = " + ".join(f"{name} {value or 0:.2f}" for name, value in kit["cpu_cores"].items())
    return [f"  per core     {per_cpu or 0:10.0f} req per CPU-second ({cores} = "
            f"{kit['cpu_cores_total']:.2f} cores)",
            f"  kit          {kit['served']:.0f} requests served during the load (warm-up included), "
            f"{kit['introspections']:.0f} introspection requests, "
            f"{kit.get('jwks_fetches') or 0:.0f} JWKS fetch(es) since the API started"]


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def _cold_start_lines(cold: Mapping[str, Any] | None) -> list[str]:
    if not cold:
        return []
    early = cold["early_latency_ms"]
    warm_from, warm_to = cold["warm_window_s"]
    lines = [
        "  cold start   " + f"start command -> /healthz {_seconds(cold.get('start_to_healthz_s'))}; "
        f"warm rate {cold['warm_rate']:.0f} req/s (last {warm_to - warm_from:g} s)",
        f"               90 % of it after {_seconds(cold['time_to_90_s'])} (100 ms buckets, from the first "
        f"request); first {cold['early_window_s']:g} s: p50 {_ms(early['p50'])}, p99 {_ms(early['p99'])}",
    ]
    runs, hits = cold.get("argon2_client_secret_runs"), cold.get("secret_cache_hits")
    if runs is not None:
        lines.append(f"               on the new process: {runs:.0f} argon2 runs for client secrets, "
                     f"{hits or 0:.0f} secret-cache hits")
    for goal in cold.get("goals", []):
        met = "-" if goal["met"] is None else ("met" if goal["met"] else "NOT met")
        lines.append(f"  goal         {goal['goal']}: {goal['measured'] or '-'} ({met})")
    return lines


def _scale_out_lines(scale: Mapping[str, Any] | None) -> list[str]:
    if not scale:
        return []
    peak = scale.get("peak") or {}
    lines = []
    if peak:
        lines.append(f"  scale-out    A's peak {peak['throughput']:.0f} req/s; open loop at "
                     f"{scale['rate']:.0f} req/s; B started at {scale['start_command_s']:.2f} s")
    else:
        lines.append(f"  scale-out    open loop at {scale['rate']:.0f} req/s; B started at "
                     f"{scale['start_command_s']:.2f} s")
    lines.append(f"               start command -> /healthz {_seconds(scale['start_to_healthz_s'])}; "
                 f"-> B carries its share {_seconds(scale['start_to_share_s'])}")
    window = scale.get("share_window")
    if window:
        lines.append(f"               (window {window['start_s']:.1f}-{window['end_s']:.1f} s: B gave "
                     f"{window['share']:.0%} of {window['requests']} answers, p99 {_ms(window['p99_ms'])})")
    return lines


def compare_table(docs: Sequence[Mapping[str, Any]], names: Sequence[str] | None = None,
                  markdown: bool = False) -> str:
    """Throughput and p99 of each result, and their ratios to the first one."""
    base = docs[0]["summary"]
    rows: list[list[str]] = []
    for i, doc in enumerate(docs):
        s = doc["summary"]
        name = names[i] if names else doc["name"]
        tput_ratio = s["throughput"] / base["throughput"] if base["throughput"] else float("nan")
        p99 = s["latency_ms"]["p99"]
        p99_ratio = p99 / base["latency_ms"]["p99"] if base["latency_ms"]["p99"] else float("nan")
        bound = " (generator-bound)" if doc.get("generator_bound") else ""
        rows.append([name + bound, f"{s['throughput']:.0f}", f"{tput_ratio:.2f}x", f"{p99:.2f}",
                     f"{p99_ratio:.2f}x", str(s["errors"])])
    header = ["result", "req/s", "vs first", "p99 ms", "p99 vs first", "errors"]
    if markdown:
        out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(out)
    widths = [max(len(header[c]), *(len(r[c]) for r in rows)) for c in range(len(header))]
    fmt = "  ".join(f"{{:<{widths[c]}}}" if c == 0 else f"{{:>{widths[c]}}}" for c in range(len(header)))
    return "\n".join([fmt.format(*header)] + [fmt.format(*r) for r in rows])
