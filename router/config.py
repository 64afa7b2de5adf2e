"""Keeps the routing table current: control-plane HTTP, Redis notifications, the local file.

Sources, in the order they are tried:

- at start, the persisted last good snapshot (so a router restarts while the
  control plane is down), then ``GET {control_plane}/api/v1/snapshot``;
- while Redis is reachable, the revision published on ``grayroute:snapshot``
  (the document itself is read from the key of the same name);
- while it is not, HTTP polling with ``If-None-Match`` every ``poll_interval``
  (long-polls: the control plane answers as soon as a newer revision exists),
  trying Redis again on each round;
- and a conditional GET every ~30 s even while notifications flow, in case the
  control plane could not reach Redis when it published.

Every document is validated and compiled before it replaces the table in one
assignment; a bad one is logged and refused, an older revision is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.exceptions import RedisError

from router.snapshot import SNAPSHOT_CHANNEL, SNAPSHOT_KEY, parse_snapshot
from router.table import Backends, RoutingTable, jitter

log = logging.getLogger("grayroute.router.config")

SNAPSHOT_PATH = "/api/v1/snapshot"
RESYNC_SECONDS = 30.0  # conditional GET even while notifications flow


class SnapshotSource:
    def __init__(
        self,
        *,
        backends: Backends,
        on_swap: Callable[[RoutingTable], None],
        control_plane: str | None,
        token: str | None,
        redis: aioredis.Redis | None,
        snapshot_file: Path | None,
        poll_interval: float,
    ) -> None:
        self.backends = backends
        self.on_swap = on_swap
        self.control_plane = control_plane
        self.token = token
        self.redis = redis
        self.snapshot_file = snapshot_file
        self.poll_interval = poll_interval
        self.table: RoutingTable | None = None
        self.mode = "starting"  # "notify" while subscribed to Redis, else "poll"
        self.refused = 0
        self._http: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._persisting: asyncio.Task[None] | None = None
        self._persisted = -1
        self._unreachable = False

    @property
    def revision(self) -> int:
        return -1 if self.table is None else self.table.revision

    # validation and swap
    def offer(self, raw: bytes, source: str) -> bool:
        """Validate and swap in ``raw``; False when refused or not newer."""
        try:
            snapshot = parse_snapshot(raw)
        except ValidationError as exc:
            self.refused += 1
            log.error("refused snapshot from %s: %s", source, exc.errors(include_url=False)[:5])
            return False
        if snapshot.revision <= self.revision:
            return False
        try:
            table = self.backends.build(snapshot, raw)
        except ValueError as exc:
            self.refused += 1
            log.error("refused snapshot revision %d from %s: %s", snapshot.revision, source, exc)
            return False
        self.backends.activate(table)
        self.table = table
        self.on_swap(table)
        log.info("serving snapshot revision %d (from %s)", table.revision, source)
        if self.snapshot_file is not None and source != "file":
            self._schedule_persist()
        return True

    def _schedule_persist(self) -> None:
        if self._persisting is None or self._persisting.done():
            self._persisting = asyncio.get_running_loop().create_task(self._persist())

    async def _persist(self) -> None:
        # loops so a swap that lands while writing is written too
        while self.table is not None and self.table.revision > self._persisted:
            table = self.table
            assert self.snapshot_file is not None
            try:
                await asyncio.to_thread(_write_atomic, self.snapshot_file, table.raw)
            except OSError as exc:
                log.error("cannot persist snapshot to %s: %s", self.snapshot_file, exc)
                return
            self._persisted = table.revision

    # sources
    async def load_file(self) -> bool:
        if self.snapshot_file is None:
            return False
        try:
            raw = await asyncio.to_thread(self.snapshot_file.read_bytes)
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.error("cannot read %s: %s", self.snapshot_file, exc)
            return False
        accepted = self.offer(raw, "file")
        if accepted:
            self._persisted = self.revision
        return accepted

    async def fetch_http(self, timeout: float = 2.0, wait: float = 0.0) -> bool:
        """One conditional GET of the snapshot; True when a newer one was swapped in.

        ``wait`` > 0 long-polls: the control plane holds the request until a newer
        revision exists or ``wait`` seconds pass, so polling still hears of a change at once.
        """
        if self.control_plane is None:
            return False
        if self._http is None:
            self._http = aiohttp.ClientSession()
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.table is not None:
            headers["If-None-Match"] = f'"{self.table.revision}"'  # the ETag is the revision
        params = {"wait": f"{wait:g}"} if wait > 0 and self.table is not None else {}
        try:
            async with self._http.get(
                self.control_plane + SNAPSHOT_PATH,
                headers=headers,
                params=params,
                timeout=aiohttp.ClientTimeout(total=timeout + (wait if params else 0.0)),
            ) as response:
                if self._unreachable:
                    log.info("control plane reachable again")
                    self._unreachable = False
                if response.status == 304:
                    return False
                if response.status != 200:
                    log.warning("snapshot fetch answered %d", response.status)
                    return False
                raw = await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            if not self._unreachable:  # once per outage, not once per poll
                log.warning("control plane unreachable (serving revision %d): %s", self.revision,
                            exc or type(exc).__name__)
            self._unreachable = True
            return False
        return self.offer(raw, "control plane")

    async def _from_redis_key(self, announced: int | None) -> None:
        assert self.redis is not None
        raw = await self.redis.get(SNAPSHOT_KEY)
        if isinstance(raw, str):
            raw = raw.encode()
        if raw is not None and self.offer(raw, "redis"):
            return
        if announced is not None and announced > self.revision:
            # the key lags the announcement, or holds a refused document
            await self.fetch_http()

    async def start(self) -> None:
        """First table (file, then control plane, then Redis), then follow changes."""
        await self.load_file()
        await self.fetch_http()
        if self.redis is not None and self.table is None:
            try:
                await asyncio.wait_for(self._from_redis_key(None), 2.0)
            except (RedisError, OSError, TimeoutError):
                pass
        self._task = asyncio.get_running_loop().create_task(self._follow())

    async def _follow(self) -> None:
        while True:
            if self.redis is not None:
                try:
                    await self._listen()
                except (RedisError, OSError) as exc:
                    log.warning("redis notifications lost (%s); polling the control plane", exc)
            self.mode = "poll"
            await self._poll_until_redis()

    async def _listen(self) -> None:
        assert self.redis is not None
        pubsub = self.redis.pubsub()
        try:
            await pubsub.subscribe(SNAPSHOT_CHANNEL)
            self.mode = "notify"
            await self._from_redis_key(None)  # catch up on what was published while away
            loop = asyncio.get_running_loop()
            resync_at = loop.time() + jitter(RESYNC_SECONDS)
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if loop.time() >= resync_at:
                    # a control plane that could not reach Redis still serves HTTP: a cheap 304 most of the time
                    resync_at = loop.time() + jitter(RESYNC_SECONDS)
                    await self.fetch_http()
                if message is None or message.get("type") != "message":
                    continue
                try:
                    announced = int(message["data"])
                except (TypeError, ValueError):
                    log.warning("ignoring notification %r", message["data"])
                    continue
                if announced > self.revision:
                    await self._from_redis_key(announced)
        finally:
            try:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            except (RedisError, OSError):
                pass

    async def _poll_until_redis(self) -> None:
        """Poll over HTTP; return as soon as Redis answers again (if configured)."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await self.fetch_http(wait=self.poll_interval)
            if self.redis is not None:
                try:
                    await asyncio.wait_for(self.redis.ping(), self.poll_interval)
                    return
                except (RedisError, OSError, TimeoutError):
                    pass
            # a control plane that answered at once (no long-poll, or down) is asked again a period later
            await asyncio.sleep(max(0.0, jitter(self.poll_interval) - (loop.time() - started)))

    async def stop(self) -> None:
        for task in (self._task, self._persisting):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._http is not None:
            await self._http.close()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
