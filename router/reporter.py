"""Sends each closed stats window to Redis, or to the control plane when Redis is unavailable.

When neither takes a report it waits in a bounded in-memory spool and goes out,
oldest first, once either is back; a full spool drops its oldest report (counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from router.metrics import Recorder
from router.stats import LATENCY_BOUNDS_MS, CellKey, VersionWindow, queue_slot_writes, report_models

log = logging.getLogger("grayroute.router.reporter")

REPORT_PATH = "/api/v1/stats/report"


class ReportPoster:
    """POSTs report documents to one control-plane path with the router's token (stats and parity)."""

    def __init__(self, control_plane: str | None, token: str | None, path: str, what: str) -> None:
        self.url = control_plane + path if control_plane else None
        self.token = token
        self.what = what
        self._http: aiohttp.ClientSession | None = None

    async def post(self, report: dict[str, Any]) -> bool:
        """True when the control plane took the report; failures are logged, never raised."""
        if self.url is None:
            return False
        if self._http is None:
            self._http = aiohttp.ClientSession()
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            async with self._http.post(self.url, data=orjson.dumps(report), headers=headers,
                                       timeout=aiohttp.ClientTimeout(total=5.0)) as response:
                if response.status >= 300:
                    log.warning("%s report answered %d: %s", self.what, response.status,
                                (await response.text())[:200])
                    return False
                return True
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("%s report failed: %s", self.what, exc or type(exc).__name__)
            return False

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None


class StatsReporter:
    def __init__(
        self,
        *,
        recorder: Recorder,
        router_id: str,
        interval: float,
        redis: aioredis.Redis | None,
        control_plane: str | None,
        token: str | None,
        spool: int = 720,
    ) -> None:
        self.recorder = recorder
        self.router_id = router_id
        self.interval = interval
        self.redis = redis
        self.sent = 0
        self.spool: deque[tuple[dict[str, Any], dict[str, dict[CellKey, VersionWindow]]]] = deque()
        self.spool_size = spool
        self.dropped = 0
        self.poster = ReportPoster(control_plane, token, REPORT_PATH, "stats")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()

    def build(self) -> tuple[dict[str, Any], dict[str, dict[CellKey, VersionWindow]]] | None:
        """Close the current window: the report to POST, and its cells per model for Redis."""
        start, end, window = self.recorder.take_window()
        if not window:
            return None
        cells: dict[str, dict[CellKey, VersionWindow]] = {}
        for (model, *key), cell in window.items():
            cells.setdefault(model, {})[(key[0], key[1], key[2], key[3])] = cell
        report = {
            "router": self.router_id,
            "window_start": start,
            "window_end": end,
            "bounds_ms": list(LATENCY_BOUNDS_MS),
            "models": report_models(window),
        }
        return report, cells

    async def flush(self) -> bool:
        """Close the current window and deliver it with any spooled ones; False when some wait on."""
        latest = self.build()
        if latest is not None:
            self.spool.append(latest)  # the report and its slot cells: Redis needs the cells, the POST the report
        use_redis = self.redis is not None
        while self.spool:
            report, cells = self.spool[0]
            delivered = False
            if use_redis:
                try:
                    await asyncio.wait_for(self._to_redis(report, cells), 2.0)
                    delivered = True
                except (RedisError, OSError, TimeoutError) as exc:
                    log.warning("stats to redis failed (%s); posting to the control plane", exc)
                    use_redis = False  # once per flush, not once per spooled report
            if not delivered and not await self._to_control_plane(report):
                break
            self.spool.popleft()
            self.sent += 1
        while len(self.spool) > self.spool_size:
            self.spool.popleft()  # the oldest matter least to a current verdict
            self._drop()
        self.recorder.reports_spooled = len(self.spool)
        return not self.spool

    def _drop(self) -> None:
        self.dropped += 1
        self.recorder.reports_dropped = self.dropped
        if self.dropped == 1 or self.dropped % 100 == 0:
            log.warning("stats spool full: %d reports dropped so far", self.dropped)

    async def _to_redis(self, report: dict[str, Any], cells: dict[str, dict[CellKey, VersionWindow]]) -> None:
        assert self.redis is not None
        async with self.redis.pipeline(transaction=False) as pipe:
            for model, model_cells in cells.items():
                queue_slot_writes(pipe, model=model, router=report["router"], window_end=report["window_end"],
                                  cells=model_cells)
            await pipe.execute()

    async def _to_control_plane(self, report: dict[str, Any]) -> bool:
        return await self.poster.post(report)

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()  # last partial window
        await self.poster.close()


