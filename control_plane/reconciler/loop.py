"""The reconcile loop: level-triggered passes, woken by changes, resynced periodically.

A pass never acts on an event's content: a wake only says "look again", and
each pass re-reads desired state (the database) and actual state (the
target). Temporary failures back off exponentially (with jitter) without
ending the loop; permanent ones are already in the status rows the pass
writes. With several replicas, only the Lease holder runs passes.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from control_plane.deployments.models import Phase
from control_plane.reconciler import desired, status
from control_plane.reconciler.desired import DeploymentKey, Inputs
from control_plane.reconciler.targets import SyncReport, Target

log = logging.getLogger(__name__)


class Store(Protocol):
    """Where desired state comes from and status goes to (the database in production)."""

    async def load(self, *, kind: str) -> Inputs:
        """Registry, current traffic and previous status rows for pools of ``kind``."""

    async def save(self, rows: Sequence[status.StatusRow], removed: Sequence[DeploymentKey], *, kind: str) -> bool:
        """Write rows that changed, delete ``removed``; return whether routing changed (a snapshot was published)."""


class Elector(Protocol):
    @property
    def is_leader(self) -> bool: ...

    async def run(self, on_change: Callable[[bool], None], stop: asyncio.Event) -> None: ...


@dataclass
class Backoff:
    base: float = 0.5
    cap: float = 60.0
    failures: int = 0

    def next_delay(self) -> float:
        self.failures += 1
        delay = min(self.cap, self.base * 2 ** (self.failures - 1))
        return float(delay * random.uniform(0.8, 1.2))  # spread replicas out after a shared outage

    def reset(self) -> None:
        self.failures = 0


@dataclass
class PassResult:
    report: SyncReport
    routing_changed: bool
    seconds: float
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


class Reconciler:
    def __init__(
        self,
        *,
        store: Store,
        target: Target,
        drain_seconds: float = 600.0,
        resync_seconds: float = 30.0,
        elector: Elector | None = None,
        backoff: Backoff | None = None,
        debounce_seconds: float = 0.1,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.target = target
        self.drain = timedelta(seconds=drain_seconds)
        self.resync_seconds = resync_seconds
        self.elector = elector
        self.backoff = backoff or Backoff()
        self.debounce_seconds = debounce_seconds
        self.clock = clock
        self.passes = 0
        self.last_success: float | None = None
        self.heartbeat = time.monotonic()
        self._wake = asyncio.Event()
        # each deployment's last (phase, name), to log what changed rather than every pass
        self._seen: dict[DeploymentKey, tuple[Phase, str]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------ waking

    def wake(self) -> None:
        """Ask for a pass soon. Safe to call from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake.set()
        else:
            loop.call_soon_threadsafe(self._wake.set)

    @property
    def is_leader(self) -> bool:
        return self.elector is None or self.elector.is_leader

    # ------------------------------------------------------------ one pass

    async def reconcile_once(self) -> PassResult:
        started = time.monotonic()
        kind = self.target.kind
        inputs = await self.store.load(kind=kind)
        plan = desired.plan(inputs, kind=kind, now=self.clock(), drain=self.drain)
        report = await self.target.sync(plan.deployments)
        rows = status.rows(plan, report, drain=self.drain)
        changed = await self.store.save(rows, plan.removed, kind=kind)
        self._log_events(plan, rows)
        result = PassResult(report, changed, time.monotonic() - started, list(report.transient_errors))
        self.passes += 1
        return result

    def _log_events(self, plan: desired.Plan, rows: list[status.StatusRow]) -> None:
        """One line per change a person cares about: started, ready, draining, failed, deleted."""
        names = {d.key: d.name for d in plan.deployments}
        for row in rows:
            name = names.get(row.key, f"version {row.version_id} on pool {row.pool_id}")
            before = self._seen.get(row.key)
            self._seen[row.key] = (row.phase, name)
            if before is not None and before[0] is row.phase:
                continue
            if row.phase is Phase.READY:
                log.info("deployment %s ready (%s)", name, row.message)
            elif row.phase is Phase.DRAINING:
                log.info("deployment %s draining: %s", name, row.message)
            elif row.phase is Phase.FAILED:
                log.warning("deployment %s failed: %s", name, row.message)
            elif before is None:
                log.info("deployment %s started (%d replica%s)", name, row.desired_replicas,
                         "" if row.desired_replicas == 1 else "s")
            else:
                log.info("deployment %s not ready: %s", name, row.message)
        for key in plan.removed:
            gone = self._seen.pop(key, None)
            log.info("deployment %s deleted", gone[1] if gone else f"version {key[0]} on pool {key[1]}")

    # ------------------------------------------------------------ the loop

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        await self.target.start(self.wake)
        elector_task = None
        if self.elector is not None:
            elector_task = asyncio.create_task(self.elector.run(lambda _leading: self.wake(), stop))
        try:
            await self._run(stop)
        finally:
            if elector_task is not None:
                await elector_task

    async def _run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.heartbeat = time.monotonic()
            if not self.is_leader:
                await self._wait(stop, self.resync_seconds)
                continue
            self._wake.clear()
            try:
                result = await self.reconcile_once()
                errors = result.errors
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the loop outlives any one failed pass
                log.exception("reconcile pass failed")
                errors = [f"{type(exc).__name__}: {exc}"]
            if errors:
                delay = self.backoff.next_delay()
                log.warning("reconcile pass incomplete (%s); retrying in %.1fs", "; ".join(errors[:3]), delay)
                # Back off even if woken: a storm of notifications must not hammer a failing API.
                await self._sleep(stop, delay)
                continue
            self.backoff.reset()
            self.last_success = time.monotonic()
            await self._wait(stop, self.resync_seconds)
            if self._wake.is_set() and self.debounce_seconds:
                await self._sleep(stop, self.debounce_seconds)  # let a burst of changes land in one pass

    async def _wait(self, stop: asyncio.Event, timeout: float) -> None:
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> None:
        try:
            await asyncio.wait_for(stop.wait(), timeout=seconds)
        except TimeoutError:
            pass

    # ------------------------------------------------------------ health

    def health(self) -> tuple[bool, dict[str, object]]:
        """Alive while the loop keeps turning; a failing API server is not a reason to restart us."""
        now = time.monotonic()
        limit = 3 * max(self.resync_seconds, self.backoff.cap) + 30
        alive = now - self.heartbeat < limit
        return alive, {
            "status": "ok" if alive else "stalled",
            "leader": self.is_leader,
            "passes": self.passes,
            "consecutive_failures": self.backoff.failures,
            "seconds_since_success": None if self.last_success is None else round(now - self.last_success, 3),
            "target": self.target.kind,
        }
