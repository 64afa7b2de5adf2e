"""Keeps routers' parity windows for a while and merges them; no HTTP here.

Routers with Redis write a sorted set per model at ``grayroute:parity:{model}``
(scored by window end) themselves; others POST, and the report lands in the
same store (Redis when configured, else memory).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Protocol

import orjson

from control_plane.parity.schemas import (
    ModelParity,
    OutputParity,
    OutputSeries,
    PairParity,
    ParityReport,
    ParitySeries,
)
from router.parity import ERROR_BOUNDS, REDIS_KEY_PREFIX

Entry = dict[str, Any]  # a router's report, narrowed to one model's windows


class ParityStore(Protocol):
    retention: float

    async def add(self, model: str, entry: Entry) -> None: ...
    async def since(self, model: str, start: float) -> list[Entry]: ...


class MemoryParityStore:
    def __init__(self, retention_seconds: float) -> None:
        self.retention = retention_seconds
        self._entries: dict[str, deque[Entry]] = {}

    async def add(self, model: str, entry: Entry) -> None:
        entries = self._entries.setdefault(model, deque())
        entries.append(entry)
        horizon = entry["window_end"] - self.retention
        while entries and entries[0]["window_end"] < horizon:
            entries.popleft()

    async def since(self, model: str, start: float) -> list[Entry]:
        return [e for e in self._entries.get(model, ()) if e["window_end"] > start]


class RedisParityStore:
    def __init__(self, url: str, retention_seconds: float) -> None:
        import redis.asyncio as redis

        self.retention = retention_seconds
        self._redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)

    async def add(self, model: str, entry: Entry) -> None:
        key = REDIS_KEY_PREFIX + model
        end = entry["window_end"]
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {orjson.dumps(entry): end})
            pipe.zremrangebyscore(key, "-inf", end - self.retention)
            pipe.expire(key, int(self.retention))
            await pipe.execute()

    async def since(self, model: str, start: float) -> list[Entry]:
        members = await self._redis.zrangebyscore(REDIS_KEY_PREFIX + model, f"({start}", "+inf")
        return [orjson.loads(m) for m in members if isinstance(m, bytes | str)]

    async def close(self) -> None:
        await self._redis.aclose()


def store_for(redis_url: str | None, retention_seconds: float) -> ParityStore:
    return RedisParityStore(redis_url, retention_seconds) if redis_url else MemoryParityStore(retention_seconds)


async def record(store: ParityStore, *, report: ParityReport) -> int:
    """Keep a router's windows, per model; returns how many windows it carried."""
    by_model: dict[str, list[Entry]] = {}
    for window in report.windows:
        by_model.setdefault(window.model, []).append(window.model_dump())
    for model, windows in by_model.items():
        await store.add(model, {"router": report.router, "window_start": report.window_start,
                                "window_end": report.window_end, "error_bounds": report.error_bounds,
                                "windows": windows})
    return len(report.windows)


_PAIR_COUNTS = ("mirrored", "dropped", "errors", "timeouts", "compared", "unreadable")
_OUTPUT_COUNTS = ("compared", "shape_mismatch", "dtype_mismatch", "missing", "elements", "top1_agree", "top1_rows")


def _wilson(successes: int, total: int, z: float = 1.96) -> tuple[float, float] | None:
    if total == 0:
        return None
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def _quantile(histogram: list[int], bounds: list[float], q: float) -> float | None:
    total = sum(histogram)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(histogram):
        seen += count
        if seen >= rank:
            return bounds[i] if i < len(bounds) else math.inf
    return math.inf


def merge(model: str, window: int, entries: list[Entry]) -> ModelParity:
    pairs: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    bounds = list(ERROR_BOUNDS)
    routers = set()
    for entry in entries:
        routers.add(entry["router"])
        bounds = entry.get("error_bounds") or bounds
        for w in entry["windows"]:
            key = (w["shadow_version"], w["primary_version"], w["primary_gpu_arch"], w["shadow_gpu_arch"])
            pair = pairs.setdefault(key, {"outputs": {}, **dict.fromkeys(_PAIR_COUNTS, 0)})
            for name in _PAIR_COUNTS:
                pair[name] += w.get(name, 0)
            for name, out in w.get("outputs", {}).items():
                cell = pair["outputs"].setdefault(name, {"max_abs_error": 0.0, "sum_abs_error": 0.0, "histogram": [],
                                                         **dict.fromkeys(_OUTPUT_COUNTS, 0)})
                for field in _OUTPUT_COUNTS:
                    cell[field] += out.get(field, 0)
                cell["max_abs_error"] = max(cell["max_abs_error"], out.get("max_abs_error", 0.0))
                cell["sum_abs_error"] += out.get("sum_abs_error", 0.0)
                histogram = out.get("max_abs_histogram", [])
                if len(cell["histogram"]) < len(histogram):
                    cell["histogram"] += [0] * (len(histogram) - len(cell["histogram"]))
                for i, count in enumerate(histogram):
                    cell["histogram"][i] += count
    result = []
    for (shadow, primary, primary_arch, shadow_arch), pair in sorted(pairs.items()):
        outputs = []
        for name, cell in sorted(pair["outputs"].items()):
            rows = cell["top1_rows"]
            outputs.append(OutputParity(
                name=name, compared=cell["compared"], shape_mismatch=cell["shape_mismatch"],
                dtype_mismatch=cell["dtype_mismatch"], missing=cell["missing"], max_abs_error=cell["max_abs_error"],
                mean_abs_error=cell["sum_abs_error"] / cell["elements"] if cell["elements"] else None,
                top1_agreement=cell["top1_agree"] / rows if rows else None,
                top1_interval=_wilson(cell["top1_agree"], rows), top1_rows=rows,
                max_abs_quantiles={f"p{round(q * 100)}": _quantile(cell["histogram"], bounds, q)
                                   for q in (0.5, 0.9, 0.99)},
                max_abs_histogram=cell["histogram"],
            ))
        result.append(PairParity(shadow_version=shadow, primary_version=primary, primary_gpu_arch=primary_arch,
                                 shadow_gpu_arch=shadow_arch, outputs=outputs,
                                 **{name: pair[name] for name in _PAIR_COUNTS}))
    return ModelParity(model=model, window_seconds=window, routers=len(routers), error_bounds=bounds, pairs=result)


async def get(store: ParityStore, *, model: str, window: int, now: float) -> ModelParity:
    return merge(model, window, await store.since(model, now - window))


MAX_POINTS = 1000  # a longer series is refused: ask for a coarser step


def points_of(*, since: float, until: float, step: int) -> tuple[int, int]:
    """(first step start, number of steps) covering ``since`` to ``until``, aligned to ``step``."""
    first = int(since // step * step)
    return first, max(0, math.ceil((until - first) / step))


async def series(store: ParityStore, *, model: str, since: float, until: float, step: int) -> ParitySeries:
    """One point per ``step`` seconds: each report counts in the step its window ends in."""
    first, points = points_of(since=since, until=until, step=step)
    per_point: list[list[Entry]] = [[] for _ in range(points)]
    for entry in await store.since(model, first):
        index = int((entry["window_end"] - first) // step)
        if 0 <= index < points:
            per_point[index].append(entry)
    merged = [merge(model, step, entries) for entries in per_point]
    bounds = next((m.error_bounds for m in merged if m.pairs), list(ERROR_BOUNDS))
    keys = sorted({(p.shadow_version, p.primary_version, p.primary_gpu_arch, p.shadow_gpu_arch, o.name)
                   for m in merged for p in m.pairs for o in p.outputs})
    lines = []
    for shadow, primary, primary_arch, shadow_arch, name in keys:
        cells: list[OutputParity | None] = []
        for m in merged:
            pair = next((p for p in m.pairs if (p.shadow_version, p.primary_version, p.primary_gpu_arch,
                                                p.shadow_gpu_arch) == (shadow, primary, primary_arch, shadow_arch)),
                        None)
            cells.append(next((o for o in pair.outputs if o.name == name), None) if pair else None)
        lines.append(OutputSeries(
            shadow_version=shadow, primary_version=primary, primary_gpu_arch=primary_arch,
            shadow_gpu_arch=shadow_arch, output=name,
            compared=[c.compared if c else 0 for c in cells],
            top1_rows=[c.top1_rows if c else 0 for c in cells],
            top1_agreement=[c.top1_agreement if c else None for c in cells],
            max_abs_p99=[_p99_bound(c) for c in cells],
            max_abs_error=[c.max_abs_error if c and c.compared else None for c in cells],
        ))
    return ParitySeries(model=model, since=first, until=first + points * step, step_seconds=step,
                        timestamps=[float(first + i * step) for i in range(points)], error_bounds=bounds, lines=lines)


def _p99_bound(cell: OutputParity | None) -> float | None:
    # The histogram gives a bucket bound (inf past the last one); the largest error seen bounds p99 too.
    if cell is None or not cell.compared:
        return None
    bound = cell.max_abs_quantiles.get("p99")
    return cell.max_abs_error if bound is None else min(bound, cell.max_abs_error)
