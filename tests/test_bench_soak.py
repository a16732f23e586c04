"""The bench's soak scenario: its plumbing (peak, open loop, memory samples, result), in seconds.
No assertion here is about speed or memory size; the 10-minute soak is run by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.soak import SoakOptions, group_rss_kib, soak, soak_summary

ROOT = Path(__file__).resolve().parent.parent
FAST = {"password_time_cost": "1", "password_memory_cost": "1024"}


def test_group_rss_reads_this_process_group() -> None:
    found = group_rss_kib(os.getpgrp())
    assert found.get(os.getpid(), 0) > 0


async def test_a_short_soak_at_a_given_rate(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    opts = SoakOptions(duration=2, rate=20, connections=4, sample_seconds=0.5, settings=FAST,
                       output=out, quiet=True)
    doc = await soak(opts, ["soak", "--duration", "2", "--rate", "20"])
    assert doc["errors"]["total"] == 0 and doc["peak"] is None and doc["rate"] == 20
    assert 30 <= doc["summary"]["requests"] <= 50
    mem = doc["memory"]
    assert mem["start_rss_kib"] > 0 and mem["end_rss_kib"] > 0
    phases = [s["phase"] for s in mem["samples"]]
    assert phases[0] == "start" and phases[-1] == "end" and phases.count("soak") >= 2
    assert json.loads(out.read_text())["memory"]["growth_kib"] == mem["growth_kib"]
    assert "server RSS" in soak_summary(doc)


def test_the_cli_measures_the_peak_then_soaks_at_half(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "soak", "--duration", "1", "--peak-seconds", "1", "--warmup", "0",
         "--connections", "2", "--sample-seconds", "0.5", "--quiet", "-o", str(out),
         "--set", "password_time_cost=1", "--set", "password_memory_cost=1024"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    assert doc["peak"]["throughput"] > 0 and doc["peak"]["errors"] == 0
    assert doc["rate"] == max(1.0, doc["peak"]["throughput"] / 2)
    assert doc["errors"]["total"] == 0 and doc["summary"]["requests"] > 0
    assert "server RSS" in proc.stdout
