"""The snapshot publisher: after a routing change commits, build the snapshot and tell routers (and reconcilers).

``SnapshotPublisher`` is the ``changes.Committer`` every service hands its
session to. Notification has two providers behind one small interface:
in-process (the embedded default, which also serves long-polls) and Redis
(snapshot stored at ``SNAPSHOT_KEY``, revision published on
``SNAPSHOT_CHANNEL``, both named in ``router.snapshot``). A Redis outage never
fails the change that triggered the publish: routers fall back to polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Protocol

import orjson
from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from control_plane import changes
from control_plane.traffic import snapshot as snapshot_builder
from router.snapshot import SNAPSHOT_CHANNEL, SNAPSHOT_KEY

log = logging.getLogger(__name__)



class Notifier(Protocol):
    async def publish(self, revision: int, payload: bytes) -> None: ...
    async def wait_for_revision_after(self, revision: int, timeout: float) -> int: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...


class InProcessNotifier:
    """Wakes waiters in this process; the embedded default."""

    def __init__(self) -> None:
        self._latest = 0
        self._changed = asyncio.Condition()

    async def publish(self, revision: int, payload: bytes) -> None:
        await self._observed(revision)

    async def _observed(self, revision: int) -> None:
        async with self._changed:
            if revision > self._latest:
                self._latest = revision
                self._changed.notify_all()

    async def wait_for_revision_after(self, revision: int, timeout: float) -> int:
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait_for(lambda: self._latest > revision), timeout)
            return self._latest

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


class RedisNotifier(InProcessNotifier):
    """Stores the snapshot in Redis and publishes its revision; listens for other replicas' changes."""

    def __init__(self, url: str) -> None:
        super().__init__()
        import redis.asyncio as redis

        self._redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._listener: asyncio.Task[None] | None = None

    async def publish(self, revision: int, payload: bytes) -> None:
        await self._observed(revision)
        try:
            # Only ever move the stored snapshot forward, even with several publishers.
            await self._redis.eval(_SET_IF_NEWER, 2, SNAPSHOT_KEY, SNAPSHOT_KEY + ":revision", revision, payload)
            await self._redis.publish(SNAPSHOT_CHANNEL, str(revision))
        except Exception as exc:  # noqa: BLE001 - Redis is optional for correctness
            log.warning("could not publish snapshot %d to Redis (routers will poll): %s", revision, exc)

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="grayroute-redis-listener")

    async def _listen(self) -> None:
        delay = 0.5
        while True:
            try:
                pubsub = self._redis.pubsub()
                await pubsub.subscribe(SNAPSHOT_CHANNEL)
                delay = 0.5
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        with contextlib.suppress(ValueError):
                            await self._observed(int(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                log.info("Redis subscription lost (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        await self._redis.aclose()


_SET_IF_NEWER = """
local current = tonumber(redis.call('GET', KEYS[2]) or '-1')
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[2])
  redis.call('SET', KEYS[2], ARGV[1])
  return 1
end
return 0
"""


class SnapshotPublisher:
    """Builds snapshots, caches the newest encoding, and hands revisions to the notifier.

    The encoding is kept per model. When every revision since the cached one
    was bumped by this process for known models, only those models are read
    again; any other gap (another process's change, a pool change) rebuilds all.
    """

    def __init__(self, sessions: async_sessionmaker[AsyncSession], notifier: Notifier) -> None:
        self._sessions = sessions
        self.notifier = notifier
        self._cached: tuple[int, bytes] | None = None
        self._fragments: dict[str, bytes] = {}
        self._own_bumps: dict[int, int | None] = {}  # revision -> model id, bumped by this process
        self._build_lock = asyncio.Lock()
        self._publish_lock = asyncio.Lock()  # revisions reach the notifier in order
        self._dirty = False
        self._worker: asyncio.Task[None] | None = None
        self.listeners: list[Callable[[int], Awaitable[None]]] = []

    async def encoded(self, session: AsyncSession | None = None) -> tuple[int, bytes]:
        """(revision, JSON) of the current snapshot, rebuilt only when the revision moved."""
        async with contextlib.AsyncExitStack() as stack:
            if session is None:
                session = await stack.enter_async_context(self._sessions())
            revision = await changes.current_revision(session)
            cached = self._cached
            if cached is not None and cached[0] == revision:
                return cached
            async with self._build_lock:
                if self._cached is not None and self._cached[0] >= revision:
                    return self._cached
                await self._rebuild(session, revision)
                assert self._cached is not None
                return self._cached

    async def _rebuild(self, session: AsyncSession, revision: int) -> None:
        base = self._cached[0] if self._cached is not None else None
        changed: set[int] | None = None
        if base is not None and all(self._own_bumps.get(r) is not None for r in range(base + 1, revision + 1)):
            changed = {self._own_bumps[r] for r in range(base + 1, revision + 1)}  # type: ignore[misc]
        snapshot = await snapshot_builder.build(session, model_ids=changed)
        if snapshot["revision"] != revision:
            # Someone committed meanwhile: the partial read does not describe one revision.
            snapshot = await snapshot_builder.build(session)
            changed = None
        fragments = {} if changed is None else dict(self._fragments)
        for name, model in snapshot["models"].items():
            fragments[name] = orjson.dumps(model)
        self._fragments = fragments
        built = int(snapshot["revision"])
        header = orjson.dumps({"revision": built, "generated_at": snapshot["generated_at"]})[:-1]
        body = b",".join(orjson.dumps(name) + b":" + fragment for name, fragment in sorted(fragments.items()))
        self._cached = (built, header + b',"models":{' + body + b"}}")
        for seen in [r for r in self._own_bumps if r <= built]:
            del self._own_bumps[seen]

    async def publish(self) -> int:
        """Publish the current snapshot now."""
        async with self._publish_lock:
            revision, payload = await self.encoded()
            await self.notifier.publish(revision, payload)
        for listener in self.listeners:
            try:
                await listener(revision)
            except Exception:  # noqa: BLE001 - a listener must not fail the change
                log.exception("snapshot listener failed")
        return revision

    def schedule(self) -> None:
        """Publish soon, off the request path; changes arriving during a build coalesce into one more build."""
        self._dirty = True
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._publish_while_dirty(), name="grayroute-snapshot-publisher")

    async def _publish_while_dirty(self) -> None:
        while self._dirty:
            self._dirty = False
            try:
                await self.publish()
            except Exception:  # noqa: BLE001 - the change is committed; routers will poll
                log.exception("publishing the snapshot failed")

    async def drain(self) -> None:
        """Wait until every scheduled publish is done (shutdown, CLI, tests)."""
        while self._worker is not None and not self._worker.done():
            await asyncio.shield(self._worker)

    async def commit(self, session: AsyncSession) -> None:
        """Commit ``session``; when it bumped the snapshot revision, schedule a publish."""
        bumps = changes.pending_bumps(session)
        await session.commit()
        if bumps:
            self._own_bumps.update(bumps)
            self.schedule()


def _snapshot_publisher(request: Request) -> SnapshotPublisher:
    return request.app.state.publisher  # type: ignore[no-any-return]


SnapshotPublisherDep = Annotated[SnapshotPublisher, Depends(_snapshot_publisher)]


def notifier_for(redis_url: str | None) -> Notifier:
    return RedisNotifier(redis_url) if redis_url else InProcessNotifier()
