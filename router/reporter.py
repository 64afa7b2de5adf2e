"""Sends each closed window (stats here, parity in ``router.parity``) to Redis, or to the control
plane when Redis is unavailable.

When neither takes a report it waits in a bounded in-memory spool and goes out,
oldest first, once either is back; a full spool drops its oldest report (counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any, Generic, TypeVar

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


Item = TypeVar("Item")  # one closed window: what Redis and the control plane each need of it


class WindowReporter(Generic[Item]):
    """Every ``interval``: close a window and deliver it with any spooled before it, oldest first."""

    what = "window"  # names the reports in logs

    def __init__(self, *, router_id: str, interval: float, redis: aioredis.Redis | None, control_plane: str | None,
                 token: str | None, path: str, spool: int = 720) -> None:
        self.router_id = router_id
        self.interval = interval
        self.redis = redis
        self.sent = 0
        self.spool: deque[Item] = deque()
        self.spool_size = spool
        self.dropped = 0
        self.poster = ReportPoster(control_plane, token, path, self.what)
        self._task: asyncio.Task[None] | None = None

    def build(self) -> Item | None:
        """Close the current window; None when nothing happened in it."""
        raise NotImplementedError

    def report(self, item: Item) -> dict[str, Any]:
        """The document the control plane takes."""
        raise NotImplementedError

    async def to_redis(self, item: Item) -> None:
        raise NotImplementedError

    def spool_changed(self) -> None:
        """``spool`` or ``dropped`` changed (the stats reporter shows them as metrics)."""

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()

    async def flush(self) -> bool:
        """Close the current window and deliver it with any spooled ones; False when some wait on."""
        latest = self.build()
        if latest is not None:
            self.spool.append(latest)
        use_redis = self.redis is not None
        while self.spool:
            item = self.spool[0]
            delivered = False
            if use_redis:
                try:
                    await asyncio.wait_for(self.to_redis(item), 2.0)
                    delivered = True
                except (RedisError, OSError, TimeoutError) as exc:
                    log.warning("%s to redis failed (%s); posting to the control plane", self.what, exc)
                    use_redis = False  # once per flush, not once per spooled report
            if not delivered and not await self.poster.post(self.report(item)):
                break
            self.spool.popleft()
            self.sent += 1
        while len(self.spool) > self.spool_size:
            self.spool.popleft()  # the oldest matter least to a current verdict
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.warning("%s spool full: %d reports dropped so far", self.what, self.dropped)
        self.spool_changed()
        return not self.spool

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()  # last partial window
        await self.poster.close()


StatsItem = tuple[dict[str, Any], dict[str, dict[CellKey, VersionWindow]]]  # the report, and its cells per model


class StatsReporter(WindowReporter[StatsItem]):
    what = "stats"

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
        super().__init__(router_id=router_id, interval=interval, redis=redis, control_plane=control_plane,
                         token=token, path=REPORT_PATH, spool=spool)
        self.recorder = recorder

    def build(self) -> StatsItem | None:
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

    def report(self, item: StatsItem) -> dict[str, Any]:
        return item[0]

    async def to_redis(self, item: StatsItem) -> None:
        assert self.redis is not None
        report, cells = item
        async with self.redis.pipeline(transaction=False) as pipe:
            for model, model_cells in cells.items():
                queue_slot_writes(pipe, model=model, router=report["router"], window_end=report["window_end"],
                                  cells=model_cells)
            await pipe.execute()

    def spool_changed(self) -> None:
        self.recorder.reports_spooled = len(self.spool)
        self.recorder.reports_dropped = self.dropped
