"""`python -m bench plot`: throughput and latency over time, one line per result file.

matplotlib is imported here only (it is in the `bench` extra), so the rest of the tool works
without it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot(docs: Sequence[dict[str, Any]], out: Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SystemExit("plot needs matplotlib: pip install -e '.[bench]'") from exc
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6.5))
    names = [d["name"] for d in docs]
    for doc in docs:
        series = doc.get("time_series") or []
        if not series:
            continue
        t = [p["t"] for p in series]
        name = doc["name"]
        if names.count(name) > 1:  # the same scenario twice: tell the runs apart by their start
            name += f" {str(doc.get('started_at', ''))[11:19]}"
        line = top.plot(t, [p["throughput"] for p in series], label=name)[0]
        bottom.plot(t, [p["p99_ms"] for p in series], color=line.get_color(), label=f"{name} p99")
        bottom.plot(t, [p["p50_ms"] for p in series], color=line.get_color(), linestyle="--",
                    label=f"{name} p50")
    top.set_ylabel("requests/s")
    top.set_ylim(bottom=0)
    top.grid(True, alpha=0.3)
    top.legend(loc="lower right", fontsize="small")
    top.set_title("tokensvc bench: throughput and latency per second")
    bottom.set_ylabel("latency (ms)")
    bottom.set_xlabel("seconds into the measured window")
    bottom.set_ylim(bottom=0)
    bottom.grid(True, alpha=0.3)
    bottom.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
