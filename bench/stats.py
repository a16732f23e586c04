"""Latency statistics: exact percentiles over µs integers, and a log-linear histogram for the
live "p99 so far" (HdrHistogram's layout with 64 sub-buckets: under 1.6 % relative error)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99_9", 99.9))


def percentile(sorted_values: Sequence[int], q: float) -> int:
    """Nearest-rank percentile of already sorted values (0 for none)."""
    n = len(sorted_values)
    if n == 0:
        return 0
    rank = max(1, math.ceil(q / 100.0 * n))
    return sorted_values[min(rank, n) - 1]


def latency_summary(values_us: Iterable[int]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max/mean in milliseconds."""
    ordered = sorted(values_us)
    out: dict[str, float] = {name: percentile(ordered, q) / 1000.0 for name, q in PERCENTILES}
    out["max"] = (ordered[-1] if ordered else 0) / 1000.0
    out["mean"] = (sum(ordered) / len(ordered) / 1000.0) if ordered else 0.0
    return out


class Histogram:
    """Counts of µs values in log-linear buckets; cheap to fold into, cheap to query."""

    SUB_BITS = 7
    HALF = 1 << (SUB_BITS - 1)
    SIZE = 64 * 48

    def __init__(self) -> None:
        self.counts = [0] * self.SIZE
        self.total = 0
        self.max = 0

    @classmethod
    def index(cls, value: int) -> int:
        if value < (1 << cls.SUB_BITS):
            return max(value, 0)
        shift = value.bit_length() - cls.SUB_BITS
        return (shift << (cls.SUB_BITS - 1)) + (value >> shift)

    @classmethod
    def upper(cls, idx: int) -> int:
        """The largest value that falls in bucket `idx`."""
        if idx < (1 << cls.SUB_BITS):
            return idx
        shift = (idx >> (cls.SUB_BITS - 1)) - 1
        mantissa = idx - (shift << (cls.SUB_BITS - 1))
        return ((mantissa + 1) << shift) - 1

    def add_all(self, values: Iterable[int]) -> None:
        counts = self.counts
        index = self.index
        last = self.SIZE - 1
        for v in values:
            counts[min(index(v), last)] += 1
            self.total += 1
            if v > self.max:
                self.max = v

    def percentile(self, q: float) -> int:
        if self.total == 0:
            return 0
        rank = max(1, math.ceil(q / 100.0 * self.total))
        seen = 0
        for idx, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return min(self.upper(idx), self.max)
        return self.max
