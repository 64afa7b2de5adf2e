"""Per-version figures over short windows: what routers report and the control plane merges.

The latency histogram's bucket bounds are part of the contract: routers count
into them and the control plane merges counts bucket by bucket, so both import
them from here. A request is counted in one *cell*: the version the user was
assigned (split, rule or explicit choice), the version that served it and the
serving backend's pool and GPU architecture. A request nobody served (no ready
backend) has ``""`` as served version, pool and architecture. A report (JSON)::

    {"router": "host:pid", "window_start": 1700000000.0, "window_end": 1700000005.0,
     "bounds_ms": [0.5, 1, ...],
     "models": {"resnet50": {"4": {                     # the assigned version
         "requests": 120, "errors": 3, "fallbacks": 40, "latency_sum_ms": 301.5, "buckets": [0, 4, ...],
         "error_kinds": {"connect": 1, "no_backend": 2},
         "served": [{"version": "4", "pool": "a100", "gpu_arch": "sm_80", "requests": 77, "errors": 1,
                     "fallbacks": 0, "latency_sum_ms": 201.0, "buckets": [...], "error_kinds": {...}},
                    {"version": "3", "pool": "a100", "gpu_arch": "sm_80", "requests": 40, "fallbacks": 40, ...}]}}}}

The assigned version's totals cover every cell, including requests nobody
served; ``served`` lists the cells that reached a backend. ``buckets`` has
``len(bounds_ms) + 1`` counts: bucket ``i`` holds latencies in
``(bounds_ms[i-1], bounds_ms[i]]``, the last one everything above the top bound.

With Redis, routers merge their windows straight into per-slot hashes (see
``SLOTS``): HINCRBY adds many routers' counts without a read-modify-write, and
each key expires by itself at the end of the retention period.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# Fine where inference lives (1-50 ms), coarse in the tail.
LATENCY_BOUNDS_MS: tuple[float, ...] = (
    0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 40.0,
    50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 500.0, 750.0, 1000.0, 2000.0, 5000.0, 10000.0,
)
LATENCY_BOUNDS_S: tuple[float, ...] = tuple(b / 1000 for b in LATENCY_BOUNDS_MS)

REDIS_KEY_PREFIX = "grayroute:stats:"  # + "{model}:{slot seconds}:{slot start}": a hash of merged counts
REDIS_TTL_SECONDS = 6 * 3600
# Merged windows are kept at two resolutions: (slot seconds, seconds kept). Short
# windows read the fine slots; hours of history read a few hundred coarse ones.
SLOTS: tuple[tuple[int, int], ...] = ((10, 3600), (60, REDIS_TTL_SECONDS))

# Why a request failed; a bounded set, so it can be a metric label.
HTTP_5XX = "http_5xx"  # the backend answered 5xx
NO_BACKEND = "no_backend"  # neither the assigned nor the default version had a ready backend
SHED = "shed"  # the backend's connection queue was full or the wait for a connection ran out
ERROR_KINDS = ("connect", "connect_timeout", "timeout", "protocol", "stale", HTTP_5XX, NO_BACKEND, SHED)

# (assigned version, served version, pool, gpu_arch); served/pool/gpu_arch are "" when nobody served.
CellKey = tuple[str, str, str, str]
_SEP = "\x1f"
_ROUTER_FIELD = "@router" + _SEP


def bucket_index(seconds: float) -> int:
    """The histogram bucket of a latency in seconds."""
    return bisect_left(LATENCY_BOUNDS_S, seconds)


class VersionWindow:
    """Counts for one cell in the current window; mutated per request."""

    __slots__ = ("buckets", "errors", "fallbacks", "kinds", "latency_sum", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.fallbacks = 0
        self.latency_sum = 0.0  # seconds
        self.buckets = [0] * (len(LATENCY_BOUNDS_S) + 1)
        self.kinds: dict[str, int] = {}  # errors by kind; touched only when one happens

    def add(self, other: VersionWindow) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.fallbacks += other.fallbacks
        self.latency_sum += other.latency_sum
        for i, count in enumerate(other.buckets):
            self.buckets[i] += count
        for kind, count in other.kinds.items():
            self.kinds[kind] = self.kinds.get(kind, 0) + count

    def as_report(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "fallbacks": self.fallbacks,
            "latency_sum_ms": self.latency_sum * 1000,
            "buckets": list(self.buckets),
            "error_kinds": dict(self.kinds),
        }

    @classmethod
    def from_report(cls, cell: Mapping[str, Any]) -> VersionWindow:
        window = cls()
        window.requests = cell["requests"]
        window.errors = cell.get("errors", 0)
        window.fallbacks = cell.get("fallbacks", 0)
        window.latency_sum = cell.get("latency_sum_ms", 0.0) / 1000
        window.buckets = list(cell["buckets"])
        window.kinds = dict(cell.get("error_kinds") or {})
        return window


def report_models(cells: Mapping[tuple[str, str, str, str, str], VersionWindow]) -> dict[str, dict[str, Any]]:
    """Cells keyed (model, assigned, served, pool, gpu_arch) as a report's ``models`` part."""
    models: dict[str, dict[str, Any]] = {}
    totals: dict[tuple[str, str], VersionWindow] = {}
    for (model, assigned, served, pool, arch), cell in cells.items():
        total = totals.get((model, assigned))
        if total is None:
            total = totals[(model, assigned)] = VersionWindow()
            models.setdefault(model, {})[assigned] = {"served": []}
        total.add(cell)
        if served:
            models[model][assigned]["served"].append(
                {"version": served, "pool": pool, "gpu_arch": arch, **cell.as_report()})
    for (model, assigned), total in totals.items():
        models[model][assigned].update(total.as_report())
    return models


def report_cells(versions: Mapping[str, Mapping[str, Any]]) -> dict[CellKey, VersionWindow]:
    """One model's part of a report (assigned version -> window) back into cells.

    A report without ``served`` (a router from before attribution) is one cell
    served by the version itself, pool and architecture unknown.
    """
    cells: dict[CellKey, VersionWindow] = {}
    for assigned, window in versions.items():
        served = window.get("served")
        if served is None:
            cells[(assigned, assigned, "", "")] = VersionWindow.from_report(window)
            continue
        rest = VersionWindow.from_report(window)
        for part in served:
            cell = VersionWindow.from_report(part)
            key = (assigned, part["version"], part["pool"], part["gpu_arch"])
            known = cells.get(key)
            if known is None:
                cells[key] = cell
            else:
                known.add(cell)
            _subtract(rest, cell)
        if rest.requests:  # answered without a backend
            rest.fallbacks = 0
            cells[(assigned, "", "", "")] = rest
    return cells


def _subtract(total: VersionWindow, part: VersionWindow) -> None:
    total.requests -= part.requests
    total.errors -= part.errors
    total.fallbacks -= part.fallbacks
    total.latency_sum = max(0.0, total.latency_sum - part.latency_sum)
    for i, count in enumerate(part.buckets):
        total.buckets[i] -= count
    for kind, count in part.kinds.items():
        left = total.kinds.get(kind, 0) - count
        if left > 0:
            total.kinds[kind] = left
        else:
            total.kinds.pop(kind, None)


def slot_key(model: str, seconds: int, start: int) -> str:
    return f"{REDIS_KEY_PREFIX}{model}:{seconds}:{start}"


def slot_increments(cells: Mapping[CellKey, VersionWindow]) -> tuple[dict[str, int], dict[str, float]]:
    """The hash fields a window adds to a slot: integer counts, and latency sums in ms."""
    ints: dict[str, int] = {}
    floats: dict[str, float] = {}
    for key, cell in cells.items():
        prefix = _SEP.join(key) + _SEP
        for name, count in (("r", cell.requests), ("e", cell.errors), ("f", cell.fallbacks)):
            if count:
                ints[prefix + name] = count
        for i, count in enumerate(cell.buckets):
            if count:  # most buckets of a window are empty
                ints[f"{prefix}b{i}"] = count
        for kind, count in cell.kinds.items():
            ints[f"{prefix}k:{kind}"] = count
        if cell.latency_sum:
            floats[prefix + "l"] = cell.latency_sum * 1000
    return ints, floats


def queue_slot_writes(pipe: Any, *, model: str, router: str, window_end: float,
                      cells: Mapping[CellKey, VersionWindow], slots: Sequence[tuple[int, int]] = SLOTS) -> None:
    """Queue on a Redis pipeline the merge of one router's window into its slots, at every resolution.

    A slot expires at a fixed time (its end plus the time it is kept), so a late
    or replayed window cannot keep old figures alive.
    """
    ints, floats = slot_increments(cells)
    for seconds, keep in slots:
        start = int(window_end // seconds) * seconds
        key = slot_key(model, seconds, start)
        for field, count in ints.items():
            pipe.hincrby(key, field, count)
        for field, value in floats.items():
            pipe.hincrbyfloat(key, field, value)
        pipe.hset(key, _ROUTER_FIELD + router, 1)
        pipe.expireat(key, start + seconds + keep)


def parse_slot(fields: Mapping[bytes | str, bytes | str]) -> tuple[set[str], dict[CellKey, VersionWindow]]:
    """A slot hash as read from Redis: the routers that wrote to it, and its cells."""
    routers: set[str] = set()
    cells: dict[CellKey, VersionWindow] = {}
    for raw_field, raw_value in fields.items():
        field = raw_field.decode() if isinstance(raw_field, bytes) else raw_field
        if field.startswith(_ROUTER_FIELD):
            routers.add(field[len(_ROUTER_FIELD):])
            continue
        parts = field.split(_SEP)
        if len(parts) != 5:
            continue
        key: CellKey = (parts[0], parts[1], parts[2], parts[3])
        cell = cells.get(key)
        if cell is None:
            cell = cells[key] = VersionWindow()
        name = parts[4]
        value = raw_value.decode() if isinstance(raw_value, bytes) else raw_value
        if name == "l":
            cell.latency_sum = float(value) / 1000
        elif name == "r":
            cell.requests = int(value)
        elif name == "e":
            cell.errors = int(value)
        elif name == "f":
            cell.fallbacks = int(value)
        elif name.startswith("k:"):
            cell.kinds[name[2:]] = int(value)
        elif name.startswith("b") and name[1:].isdigit() and int(name[1:]) < len(cell.buckets):
            cell.buckets[int(name[1:])] = int(value)
    return routers, cells


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
