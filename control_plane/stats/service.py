"""Keeps merged router windows for the retention period and reads them back as figures; no HTTP here.

Windows are merged on arrival into fixed time slots, at two resolutions (10 s
for the last hour, 60 s for the whole retention), so reading hours of history
touches a few hundred slots however many routers report. Two stores behind one
small interface:

- Redis in production. Routers with Redis write their windows there directly
  (``router.stats.queue_slot_writes``: one hash per model and slot, HINCRBY per
  count), so many routers merge without a read-modify-write and nothing passes
  through the control plane; a key expires by itself when its retention ends.
  Figures are operational data: Postgres stays the system of record for what
  people changed, and losing Redis loses charts, not decisions.
- Memory in the embedded mode; reports arrive by POST.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from control_plane.errors import InvalidInput
from control_plane.stats.schemas import (
    DeploymentLine,
    DeploymentStats,
    ModelSeries,
    ModelStats,
    SeriesLine,
    ServedShare,
    StatsReport,
    VersionStats,
)
from router.stats import (
    LATENCY_BOUNDS_MS,
    CellKey,
    VersionWindow,
    parse_slot,
    percentile_ms,
    queue_slot_writes,
    report_cells,
    slot_key,
)

FINE, COARSE = 10, 60  # slot seconds
FINE_HORIZON = 3600  # fine slots are kept this long at most
MAX_POINTS = 1000  # a series longer than this is refused: ask for a coarser step

Cells = dict[CellKey, VersionWindow]
Slot = tuple[int, set[str], Cells]  # (slot start, routers that wrote to it, cells)


class StatsStore(Protocol):
    retention: int

    async def add(self, model: str, *, router: str, window_end: float, cells: Cells) -> None: ...
    async def slots(self, model: str, *, seconds: int, start: int, end: int) -> list[Slot]:
        """Slots of ``seconds`` whose start is in [start, end)."""
        ...


def resolutions(retention: int) -> tuple[tuple[int, int], ...]:
    """(slot seconds, seconds kept) for a retention period."""
    return ((FINE, min(FINE_HORIZON, retention)), (COARSE, retention))


class MemoryStatsStore:
    def __init__(self, retention_seconds: int) -> None:
        self.retention = int(retention_seconds)
        self._slots: dict[str, dict[int, dict[int, tuple[set[str], Cells]]]] = {}

    async def add(self, model: str, *, router: str, window_end: float, cells: Cells) -> None:
        by_seconds = self._slots.setdefault(model, {})
        for seconds, keep in resolutions(self.retention):
            slots = by_seconds.setdefault(seconds, {})
            start = int(window_end // seconds) * seconds
            routers, merged = slots.setdefault(start, (set(), {}))
            routers.add(router)
            for key, cell in cells.items():
                known = merged.get(key)
                if known is None:
                    known = merged[key] = VersionWindow()
                known.add(cell)
            # kept relative to the newest window, so a quiet model keeps its last figures readable
            horizon = max(slots) + seconds - keep
            for old in [s for s in slots if s + seconds <= horizon]:
                del slots[old]

    async def slots(self, model: str, *, seconds: int, start: int, end: int) -> list[Slot]:
        slots = self._slots.get(model, {}).get(seconds, {})
        return sorted((s, routers, cells) for s, (routers, cells) in slots.items() if start <= s < end)


class RedisStatsStore:
    def __init__(self, url: str, retention_seconds: int) -> None:
        import redis.asyncio as redis

        self.retention = int(retention_seconds)
        self._redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)

    async def add(self, model: str, *, router: str, window_end: float, cells: Cells) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            queue_slot_writes(pipe, model=model, router=router, window_end=window_end, cells=cells,
                              slots=resolutions(self.retention))
            await pipe.execute()

    async def slots(self, model: str, *, seconds: int, start: int, end: int) -> list[Slot]:
        starts = list(range(_align(start, seconds, up=True), end, seconds))
        if not starts:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for s in starts:
                pipe.hgetall(slot_key(model, seconds, s))
            hashes = await pipe.execute()
        found = []
        for s, fields in zip(starts, hashes):
            if fields:
                routers, cells = parse_slot(fields)
                found.append((s, routers, cells))
        return found

    async def close(self) -> None:
        await self._redis.aclose()


async def record(store: StatsStore, *, report: StatsReport) -> int:
    """Merge a router's window into its slots; returns how many models it covered."""
    for model, versions in report.models.items():
        cells = report_cells({v: w.model_dump() for v, w in versions.items()})
        await store.add(model, router=report.router, window_end=report.window_end, cells=cells)
    return len(report.models)


def _align(t: float, seconds: int, *, up: bool = False) -> int:
    return int(math.ceil(t / seconds) if up else math.floor(t / seconds)) * seconds


def _version_order(label: str) -> tuple[int, int | str]:
    return (0, int(label)) if label.isascii() and label.isdigit() else (1, label)  # int() refuses "²"


def _figures(cell: VersionWindow) -> dict[str, Any]:
    requests = cell.requests
    return {
        "requests": requests,
        "errors": cell.errors,
        "error_rate": cell.errors / requests if requests else 0.0,
        "error_kinds": dict(sorted(cell.kinds.items())),
        "p50_ms": percentile_ms(cell.buckets, 0.50),
        "p95_ms": percentile_ms(cell.buckets, 0.95),
        "p99_ms": percentile_ms(cell.buckets, 0.99),
        "mean_ms": cell.latency_sum * 1000 / requests if requests else None,
    }


def _merged(slots: Iterable[Slot]) -> tuple[set[str], Cells]:
    routers: set[str] = set()
    cells: Cells = {}
    for _, slot_routers, slot_cells in slots:
        routers |= slot_routers
        for key, cell in slot_cells.items():
            known = cells.get(key)
            if known is None:
                known = cells[key] = VersionWindow()
            known.add(cell)
    return routers, cells


def _by_assigned(cells: Cells) -> dict[str, VersionWindow]:
    totals: dict[str, VersionWindow] = {}
    for (assigned, _, _, _), cell in cells.items():
        totals.setdefault(assigned, VersionWindow()).add(cell)
    return totals


def _by_deployment(cells: Cells) -> dict[tuple[str, str, str], VersionWindow]:
    totals: dict[tuple[str, str, str], VersionWindow] = {}
    for (_, served, pool, arch), cell in cells.items():
        if served:
            totals.setdefault((served, pool, arch), VersionWindow()).add(cell)
    return totals


def merge(slots: Sequence[Slot], *, model: str, window: int) -> ModelStats:
    """Per assigned version and per serving (version, pool, gpu_arch), over ``slots``."""
    routers, cells = _merged(slots)
    assigned = _by_assigned(cells)
    everything = sum(cell.requests for cell in assigned.values()) or 1
    versions = []
    for version in sorted(assigned, key=_version_order):
        total = assigned[version]
        served_by = [ServedShare(version=s, pool=p, gpu_arch=a, requests=c.requests, errors=c.errors)
                     for (v, s, p, a), c in sorted(cells.items(), key=lambda kv: (_version_order(kv[0][1]), kv[0]))
                     if v == version and s]
        # routers skip empty windows, so a gap means no traffic: the rate is over the whole window
        versions.append(VersionStats(
            version=version, requests_per_second=total.requests / window,
            share_of_requests=total.requests / everything, fallbacks=total.fallbacks,
            buckets=list(total.buckets), served_by=served_by, **_figures(total),
        ))
    deployments = [
        DeploymentStats(version=v, pool=p, gpu_arch=a, **_figures(cell))
        for (v, p, a), cell in sorted(_by_deployment(cells).items(),
                                      key=lambda kv: (_version_order(kv[0][0]), kv[0][1], kv[0][2]))
    ]
    return ModelStats(model=model, window_seconds=window, routers=len(routers), bounds_ms=list(LATENCY_BOUNDS_MS),
                      versions=versions, deployments=deployments)


def slot_seconds_for(window: int, retention: int) -> int:
    return FINE if window <= min(FINE_HORIZON, retention) else COARSE


async def get(store: StatsStore, *, model: str, window: int, now: float | None = None) -> ModelStats:
    """A model's merged figures over the last ``window`` seconds (to the slot: a slot counts if it ends inside)."""
    now = time.time() if now is None else now
    seconds = slot_seconds_for(window, store.retention)
    slots = await store.slots(model, seconds=seconds, start=_align(now - window, seconds, up=True),
                              end=_align(now, seconds) + seconds)
    return merge(slots, model=model, window=window)


async def cells(store: StatsStore, *, model: str, window: int, now: float | None = None) -> Cells:
    """The merged cells of the last ``window`` seconds, histograms included, for readers that regroup them
    (the version report merges a version's pools per GPU architecture)."""
    now = time.time() if now is None else now
    seconds = slot_seconds_for(window, store.retention)
    slots = await store.slots(model, seconds=seconds, start=_align(now - window, seconds, up=True),
                              end=_align(now, seconds) + seconds)
    return _merged(slots)[1]


async def series(store: StatsStore, *, model: str, since: float, until: float, step: int) -> ModelSeries:
    """One point per ``step`` seconds from ``since`` to ``until``, per assigned version and per deployment."""
    if step % FINE:
        raise InvalidInput.field("step", f"step must be a multiple of {FINE} seconds")
    seconds = COARSE if step % COARSE == 0 else FINE
    kept = dict(resolutions(store.retention))[seconds]
    if seconds == FINE and until - since > kept:
        raise InvalidInput.field("step", f"steps that are not a multiple of {COARSE} s reach back {kept} s at most")
    first = _align(since, step)
    points = math.ceil((until - first) / step) if until > first else 0
    if points > MAX_POINTS:
        raise InvalidInput.field("step", f"{points} points asked for, {MAX_POINTS} at most: use a larger step")
    slots = await store.slots(model, seconds=seconds, start=first, end=first + points * step)
    per_point: list[list[Slot]] = [[] for _ in range(points)]
    for slot in slots:
        per_point[(slot[0] - first) // step].append(slot)
    merged = [_merged(p) for p in per_point]
    assigned = [_by_assigned(cells) for _, cells in merged]
    deployed = [_by_deployment(cells) for _, cells in merged]

    def line(cells: Sequence[VersionWindow | None]) -> dict[str, list[Any]]:
        empty = VersionWindow()
        cs = [c or empty for c in cells]
        return {"requests": [c.requests for c in cs], "errors": [c.errors for c in cs],
                "error_rate": [c.errors / c.requests if c.requests else None for c in cs],
                "p50_ms": [percentile_ms(c.buckets, 0.5) for c in cs],
                "p99_ms": [percentile_ms(c.buckets, 0.99) for c in cs]}

    versions = sorted({v for point in assigned for v in point}, key=_version_order)
    lines = [SeriesLine(version=v, fallbacks=[p[v].fallbacks if v in p else 0 for p in assigned],
                        **line([p.get(v) for p in assigned])) for v in versions]
    keys = sorted({k for point in deployed for k in point}, key=lambda k: (_version_order(k[0]), k[1], k[2]))
    deployment_lines = [DeploymentLine(version=k[0], pool=k[1], gpu_arch=k[2], **line([p.get(k) for p in deployed]))
                        for k in keys]
    return ModelSeries(model=model, since=first, until=first + points * step, step_seconds=step, slot_seconds=seconds,
                       timestamps=[float(first + i * step) for i in range(points)],
                       routers=[len(r) for r, _ in merged], versions=lines, deployments=deployment_lines)


Z95 = 1.959964  # two-sided 95%


def wilson(errors: int, requests: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of an error rate: honest at small counts and at rates near 0."""
    if requests == 0:
        return 0.0, 1.0
    p = errors / requests
    centre = (p + z * z / (2 * requests)) / (1 + z * z / requests)
    half = z * math.sqrt(p * (1 - p) / requests + z * z / (4 * requests * requests)) / (1 + z * z / requests)
    return max(0.0, centre - half), min(1.0, centre + half)


def rate_difference(errors: int, requests: int, base_errors: int, base_requests: int,
                    z: float = Z95) -> tuple[float, float, float]:
    """(difference, low, high) of two error rates (Newcombe's hybrid score interval, method 10)."""
    p1, p2 = errors / requests, base_errors / base_requests
    l1, u1 = wilson(errors, requests, z)
    l2, u2 = wilson(base_errors, base_requests, z)
    d = p1 - p2
    return d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def quantile_interval(buckets: Sequence[int], q: float, z: float = Z95) -> tuple[float, float] | None:
    """A distribution-free interval of the ``q`` quantile: the quantiles at the order-statistic ranks
    ``q ± z·sqrt(q(1-q)/n)``, read off the histogram."""
    n = sum(buckets)
    if n == 0:
        return None
    spread = z * math.sqrt(q * (1 - q) / n)
    low = percentile_ms(buckets, max(0.0, q - spread))
    high = percentile_ms(buckets, min(1.0, q + spread))
    return (low or 0.0, high or 0.0)


def store_for(redis_url: str | None, retention_seconds: int) -> StatsStore:
    return RedisStatsStore(redis_url, retention_seconds) if redis_url else MemoryStatsStore(retention_seconds)
