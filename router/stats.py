"""Per-version figures over short windows: what routers report and the control plane merges.

The latency histogram's bucket bounds are part of the contract: routers count
into them and the control plane merges counts bucket by bucket, so both import
them from here. A report (JSON)::

    {"router": "host:pid", "window_start": 1700000000.0, "window_end": 1700000005.0,
     "bounds_ms": [0.5, 1, ...],
     "models": {"resnet50": {"3": {"requests": 120, "errors": 1, "fallbacks": 0,
                                   "latency_sum_ms": 301.5, "buckets": [0, 4, ...]}}}}

``buckets`` has ``len(bounds_ms) + 1`` counts: bucket ``i`` holds latencies in
``(bounds_ms[i-1], bounds_ms[i]]``, the last one everything above the top bound.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Any

# Fine where inference lives (1-50 ms), coarse in the tail.
LATENCY_BOUNDS_MS: tuple[float, ...] = (
    0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 40.0,
    50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 500.0, 750.0, 1000.0, 2000.0, 5000.0, 10000.0,
)
LATENCY_BOUNDS_S: tuple[float, ...] = tuple(b / 1000 for b in LATENCY_BOUNDS_MS)

REDIS_KEY_PREFIX = "grayroute:stats:"  # + model name: a sorted set of reports scored by window end
REDIS_TTL_SECONDS = 3600


def bucket_index(seconds: float) -> int:
    """The histogram bucket of a latency in seconds."""
    return bisect_left(LATENCY_BOUNDS_S, seconds)


class VersionWindow:
    """Counts for one (model, version) in the current window; mutated per request."""

    __slots__ = ("buckets", "errors", "fallbacks", "latency_sum", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.fallbacks = 0
        self.latency_sum = 0.0  # seconds
        self.buckets = [0] * (len(LATENCY_BOUNDS_S) + 1)

    def add(self, other: VersionWindow) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.fallbacks += other.fallbacks
        self.latency_sum += other.latency_sum
        for i, count in enumerate(other.buckets):
            self.buckets[i] += count

    def as_report(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "fallbacks": self.fallbacks,
            "latency_sum_ms": self.latency_sum * 1000,
            "buckets": list(self.buckets),
        }


def merge_buckets(histograms: Iterable[Sequence[int]]) -> list[int]:
    merged = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    for counts in histograms:
        if len(counts) != len(merged):
            raise ValueError(f"histogram has {len(counts)} buckets, expected {len(merged)}")
        for i, count in enumerate(counts):
            merged[i] += count
    return merged


def percentile_ms(buckets: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a merged histogram, interpolated inside its bucket.

    Like Prometheus' ``histogram_quantile``: exact to within one bucket. The open
    top bucket answers with the top bound.
    """
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(buckets):
        if count and seen + count >= rank:
            if i >= len(LATENCY_BOUNDS_MS):
                return LATENCY_BOUNDS_MS[-1]
            low = LATENCY_BOUNDS_MS[i - 1] if i else 0.0
            high = LATENCY_BOUNDS_MS[i]
            return low + (high - low) * (rank - seen) / count
        seen += count
    return LATENCY_BOUNDS_MS[-1]
