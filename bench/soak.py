"""`python -m bench soak`: a long open-loop run at half the measured peak, watching memory.

Starts a private redis-server and `tokensvc serve`, measures the peak with a short closed-loop
run of the scenario (unless --rate is given), then loads the same service open loop at half
that rate for the duration. The server's resident memory (every process of its group: the
supervisor and the workers, from /proc) is sampled every few seconds from before the first
request to after the last. The result says how many requests failed (expected: none) and the
memory at start and end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.results import FORMAT, git_facts, machine_facts, now_stamp, write_result
from bench.runner import RunOptions, execute
from bench.services import service_settings, shown_settings, start_redis, start_tokensvc

FORMAT_SOAK = FORMAT + "+soak"


@dataclass
class SoakOptions:
    duration: float = 600.0
    rate: float | None = None
    scenario: str = "client_credentials"
    connections: int = 64
    workers: int = 1
    peak_seconds: float = 10.0
    warmup: float = 3.0
    sample_seconds: float = 5.0
    settings: dict[str, str] = field(default_factory=dict)
    output: Path | None = None
    quiet: bool = False
    write: bool = True


def group_rss_kib(pgid: int) -> dict[int, int]:
    """VmRSS (KiB) of every live process in a process group."""
    out: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                raw = fh.read()
            if int(raw[raw.rfind(b")") + 2:].split()[2]) != pgid:
                continue
            with open(f"/proc/{entry.name}/status", "rb") as fh:
                for line in fh:
                    if line.startswith(b"VmRSS:"):
                        out[int(entry.name)] = int(line.split()[1])
                        break
        except (OSError, ValueError, IndexError):
            continue
    return out


class MemorySampler:
    """Samples a process group's RSS every `every` seconds while running."""

    def __init__(self, pgid: int, every: float) -> None:
        self.pgid = pgid
        self.every = every
        self.t0 = time.monotonic()
        self.samples: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None

    def sample(self, phase: str) -> dict[str, Any]:
        by_pid = group_rss_kib(self.pgid)
        point = {"t": round(time.monotonic() - self.t0, 3), "phase": phase,
                 "rss_kib": sum(by_pid.values()), "processes": len(by_pid),
                 "by_pid": {str(pid): rss for pid, rss in sorted(by_pid.items())}}
        self.samples.append(point)
        return point

    async def _run(self, phase: str) -> None:
        while True:
            await asyncio.sleep(self.every)
            self.sample(phase)

    def start(self, phase: str) -> None:
        self._task = asyncio.create_task(self._run(phase))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def _log(opts: SoakOptions, message: str) -> None:
    if not opts.quiet:
        print(f"[soak] {message}", file=sys.stderr, flush=True)


async def soak(opts: SoakOptions, argv: list[str]) -> dict[str, Any]:
    started_at, stamp = now_stamp()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tokensvc-soak-")))
        redis = start_redis(tmp, None)
        stack.callback(redis.stop)
        svc = start_tokensvc(tmp, redis.url, opts.workers, None, service_settings(opts.settings))
        stack.callback(svc.stop)
        _log(opts, f"tokensvc on {svc.url} ({opts.workers} worker(s)), redis on {redis.url}")
        base = RunOptions(scenario=opts.scenario, connections=opts.connections, url=svc.url,
                          admin_key=svc.extra["admin_key"], ceiling_seconds=0, quiet=opts.quiet,
                          write=False)
        sampler = MemorySampler(svc.pid, opts.sample_seconds)
        start_memory = sampler.sample("start")
        peak: dict[str, Any] | None = None
        rate = opts.rate
        if rate is None:
            _log(opts, f"measuring the peak: {opts.peak_seconds:g} s closed loop")
            peak_doc = await execute(replace(base, duration=opts.peak_seconds, warmup=opts.warmup), argv)
            peak = {"throughput": peak_doc["summary"]["throughput"],
                    "latency_ms": peak_doc["summary"]["latency_ms"],
                    "errors": peak_doc["summary"]["errors"], "seconds": opts.peak_seconds}
            rate = max(1.0, float(peak["throughput"]) / 2)
            sampler.sample("after-peak")
        _log(opts, f"soak: {rate:.0f} req/s open loop for {opts.duration:g} s")
        sampler.start("soak")
        try:
            run = await execute(replace(base, duration=opts.duration, warmup=0, rate=rate), argv)
        finally:
            await sampler.stop()
        end_memory = sampler.sample("end")
        svc.check_alive()
        settings_doc = shown_settings(svc.settings)
    errors = int(run["summary"]["errors"])
    doc: dict[str, Any] = {
        "format": FORMAT_SOAK,
        "name": "soak",
        "scenario": opts.scenario,
        "started_at": started_at,
        "stamp": stamp,
        "command": " ".join(shlex.quote(a) for a in ["python", "-m", "bench", *argv]),
        "git": git_facts(),
        "machine": machine_facts(),
        "settings": settings_doc,
        "peak": peak,
        "rate": rate,
        "rate_source": "--rate" if opts.rate is not None else "half the measured peak",
        "duration": opts.duration,
        "connections": opts.connections,
        "workers": opts.workers,
        "summary": run["summary"],
        "errors": {"total": errors, **run["errors"]},
        "schedule": run["schedule"],
        "time_series": run["time_series"],
        "memory": {"start_rss_kib": start_memory["rss_kib"], "end_rss_kib": end_memory["rss_kib"],
                   "growth_kib": end_memory["rss_kib"] - start_memory["rss_kib"],
                   "sample_seconds": opts.sample_seconds, "samples": sampler.samples},
        "notes": run["notes"],
    }
    if opts.write:
        doc["path"] = str(write_result(doc, opts.output))
    return doc


def soak_summary(doc: dict[str, Any]) -> str:
    mem = doc["memory"]
    summary = doc["summary"]
    lines = [f"soak: {doc['scenario']} at {doc['rate']:.1f} req/s ({doc['rate_source']}) for "
             f"{doc['duration']:g} s",
             f"  requests {summary['requests']}, errors {doc['errors']['total']}, "
             f"p99 {summary['latency_ms'].get('p99', 0):.2f} ms"]
    if doc["peak"] is not None:
        lines.append(f"  peak (closed loop) {doc['peak']['throughput']:.0f} req/s")
    lines.append(f"  server RSS {mem['start_rss_kib'] / 1024:.1f} MiB at start, "
                 f"{mem['end_rss_kib'] / 1024:.1f} MiB at end ({len(mem['samples'])} samples)")
    if doc.get("path"):
        lines.append(f"result: {doc['path']}")
    return "\n".join(lines)
