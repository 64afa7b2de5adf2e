"""Keeps router windows for a while and merges them per version; no HTTP here.

Two stores behind one small interface: Redis (what routers write directly when
they have it: a sorted set per model at ``grayroute:stats:{model}``, scored by
window end) and memory (the embedded default; reports arrive by POST).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Protocol

import orjson

from control_plane.stats.schemas import ModelStats, StatsReport, VersionStats
from router.stats import (
    LATENCY_BOUNDS_MS,
    REDIS_KEY_PREFIX,
    merge_buckets,
    percentile_ms,
)

Entry = dict[str, Any]  # {"router", "window_start", "window_end", "versions": {version: window}}


class StatsStore(Protocol):
    async def add(self, model: str, entry: Entry) -> None: ...
    async def since(self, model: str, start: float) -> list[Entry]: ...


class MemoryStatsStore:
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


class RedisStatsStore:
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


async def record(store: StatsStore, *, report: StatsReport) -> int:
    """Keep a router's window; returns how many models it covered."""
    for model, versions in report.models.items():
        await store.add(model, {
            "router": report.router,
            "window_start": report.window_start,
            "window_end": report.window_end,
            "versions": {v: w.model_dump() for v, w in versions.items()},
        })
    return len(report.models)


def merge(entries: list[Entry], *, model: str, window: int) -> ModelStats:
    """Per-version figures over ``entries`` (every router's windows that ended in the last ``window`` s)."""
    totals: dict[str, dict[str, Any]] = {}
    for entry in entries:
        for version, cell in entry["versions"].items():
            total = totals.setdefault(version, {"requests": 0, "errors": 0, "fallbacks": 0, "latency_sum_ms": 0.0,
                                                "histograms": []})
            for field in ("requests", "errors", "fallbacks", "latency_sum_ms"):
                total[field] += cell[field]
            total["histograms"].append(cell["buckets"])
    # routers skip empty windows, so a gap means no traffic: the rate is over the whole window
    covered = float(window)
    versions = []
    for version in sorted(totals, key=_version_order):
        total = totals[version]
        buckets = merge_buckets(total["histograms"])
        requests = total["requests"]
        versions.append(VersionStats(
            version=version,
            requests=requests,
            requests_per_second=requests / covered,
            errors=total["errors"],
            error_rate=total["errors"] / requests if requests else 0.0,
            fallbacks=total["fallbacks"],
            p50_ms=percentile_ms(buckets, 0.50),
            p95_ms=percentile_ms(buckets, 0.95),
            p99_ms=percentile_ms(buckets, 0.99),
            mean_ms=total["latency_sum_ms"] / requests if requests else None,
            buckets=buckets,
        ))
    return ModelStats(model=model, window_seconds=window, routers=len({e["router"] for e in entries}),
                      bounds_ms=list(LATENCY_BOUNDS_MS), versions=versions)


async def get(store: StatsStore, *, model: str, window: int, now: float | None = None) -> ModelStats:
    """A model's merged figures over the last ``window`` seconds."""
    now = time.time() if now is None else now
    return merge(await store.since(model, now - window), model=model, window=window)


def _version_order(label: str) -> tuple[int, int | str]:
    return (0, int(label)) if label.isascii() and label.isdigit() else (1, label)  # int() refuses "²"


def store_for(redis_url: str | None, retention_seconds: float) -> StatsStore:
    return RedisStatsStore(redis_url, retention_seconds) if redis_url else MemoryStatsStore(retention_seconds)
