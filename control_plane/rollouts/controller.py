"""The rollout controller: a level-based loop inside ``grayroute serve`` that judges, advances and rolls back.

Every tick (``GRAYROUTE_ROLLOUT_TICK_SECONDS``, default 2 s) the leader re-reads
the running rollouts and the routers' figures and decides; nothing is kept in
memory between ticks, so a restart, or another replica taking over, resumes at
the same step with the pause already served (``step_started_at`` is in the
database).

Per tick and running rollout:

1. Until the candidate has a ready deployment (on the step's pools, when the
   step names some), the step's clock restarts: the pause counts from when the
   candidate can serve, and "no backend" fallbacks are never judged.
2. The figures since the step began: for the candidate and the baseline, per
   GPU architecture, the requests assigned to the version and served by it
   (cells of ``stats``: assigned == served), with their errors and latency
   histogram. They are read from the stats slots (10 s; 60 s beyond an hour)
   from the one holding ``step_started_at``, so up to one slot before the step
   counts too: that is the same candidate at the previous weight. The first
   step starts at the next slot instead, so nothing from before the rollout
   (say, a rollout of the same labels rolled back seconds earlier) counts.
3. :func:`analysis.judge` on each architecture where both serve, with the
   step's elapsed time and pause, ``min_requests``, and ``alpha`` divided among
   the analysed steps. An architecture where only the candidate serves is
   judged for the hard limit alone. Any FAIL rolls back (the policy live at
   the start is restored); PASS on every architecture both serve advances (the
   last step, at 100%, makes the candidate the default and ends the rollout);
   otherwise the step goes on. A verdict is stored when a step's outcome
   changes, and every transition is an audited revision by ``rollout:<id>``
   whose reason carries the verdict and its evidence.

Users, not requests
-------------------
The routing hash sends all of a user's requests to one version, so requests
are clustered by user. The analysis (``rollouts.analysis``) handles it: counts
enter the likelihoods divided by a design effect, measured from per-user sums
when routers report them and otherwise the conservative ``variance_inflation``
(default 2), always for latency. The controller passes the counts as they are.

One leader
----------
A lease row (``controller_leases``) rather than a Postgres advisory lock: the
same code runs on embedded SQLite (one process), and each acting transaction
first extends the lease with ``UPDATE ... WHERE holder = me OR expired``, which
holds the row lock until that transaction commits. So a replica that lost the
lease (a long GC pause, a partition) cannot write a decision afterwards: its
extension fails and it rolls back; a competitor takes over only after the
lease expired (``lease_seconds``, 5 ticks by default) and then sees every
committed decision. An advisory lock held on a dedicated connection gives no
such fencing of the writes made on other connections.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from control_plane.changes import Committer
from control_plane.db import utcnow
from control_plane.deployments.models import Deployment
from control_plane.errors import is_database_unreachable
from control_plane.parity import service as parity_service
from control_plane.registry.models import Model, Pool, Version
from control_plane.rollouts import service as rollouts_service
from control_plane.rollouts.analysis import AnalysisConfig, ArmCounts, Judgement, ParityCounts, Verdict, judge, judge_parity
from control_plane.rollouts.models import Rollout, RolloutPhase, RolloutState
from control_plane.rollouts.webhook import Webhook
from control_plane.stats import service as stats_service
from router.stats import LATENCY_BOUNDS_MS, VersionWindow

log = logging.getLogger(__name__)

LEASE_NAME = "rollout-controller"
_EMPTY = ArmCounts.of(0, 0, [0] * (len(LATENCY_BOUNDS_MS) + 1))


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str
    per_arch: dict[str, Any]


def decide(candidate: dict[str, ArmCounts], baseline: dict[str, ArmCounts], *, elapsed_seconds: float,
           pause_seconds: float, config: AnalysisConfig) -> Decision:
    """The step's verdict from per-architecture counts (pure: the tests call it too)."""
    judged: dict[str, Judgement] = {}
    alone: dict[str, Judgement] = {}
    for arch in sorted(candidate):
        if candidate[arch].requests == 0:
            continue
        other = baseline.get(arch)
        if other is not None and other.requests > 0:
            judged[arch] = judge(candidate[arch], other, elapsed_seconds=elapsed_seconds,
                                 pause_seconds=pause_seconds, config=config)
        else:
            alone[arch] = judge(candidate[arch], _EMPTY, elapsed_seconds=elapsed_seconds,
                                pause_seconds=pause_seconds, config=config)
    per_arch = {arch: _json_safe(j.as_dict()) for arch, j in {**judged, **alone}.items()}
    failed = [(arch, j) for arch, j in judged.items() if j.verdict is Verdict.FAIL]
    failed += [(arch, j) for arch, j in alone.items() if j.verdict is Verdict.FAIL]
    if failed:
        return Decision(Verdict.FAIL, "; ".join(f"{arch}: {j.reason}" for arch, j in failed), per_arch)
    if not judged:
        return Decision(Verdict.CONTINUE, "no GPU architecture where both the candidate and the baseline "
                                          "served requests yet", per_arch)
    waiting = [(arch, j) for arch, j in judged.items() if j.verdict is not Verdict.PASS]
    if waiting:
        return Decision(Verdict.CONTINUE, "; ".join(f"{arch}: {j.reason}" for arch, j in waiting), per_arch)
    return Decision(Verdict.PASS, "; ".join(f"{arch}: {j.reason}" for arch, j in judged.items()), per_arch)


def _json_safe(value: Any) -> Any:
    """Evidence as JSON can hold it: an unbounded interval end (inf) or an unknown ratio becomes null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


class RolloutController:
    def __init__(self, *, sessions: async_sessionmaker[AsyncSession], publisher: Committer,
                 store: stats_service.StatsStore, parity_store: parity_service.ParityStore | None = None,
                 webhook: Webhook | None = None, tick_seconds: float = 2.0,
                 lease_seconds: float | None = None, holder: str | None = None) -> None:
        self.sessions = sessions
        self.publisher = publisher
        self.store = store
        # Without one (tests of the steps alone) a shadow phase sees no comparisons and waits.
        self.parity_store = parity_store or parity_service.MemoryParityStore(store.retention)
        self.webhook = webhook or Webhook(None)
        self.tick_seconds = tick_seconds
        self.lease_seconds = lease_seconds or max(5 * tick_seconds, 2.0)
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.leader = False  # as of this replica's last look; the lease row, not this flag, fences the writes
        self.ticks = 0
        # (rollout id, step index, event) of the transitions this replica made, newest last (diagnostics).
        self.decisions: collections.deque[tuple[int, int, str]] = collections.deque(maxlen=1000)

    async def run(self, stop: asyncio.Event) -> None:
        log.info("rollout controller %s started (tick %.1f s)", self.holder, self.tick_seconds)
        try:
            while not stop.is_set():
                try:
                    await self.tick()
                except Exception as exc:  # noqa: BLE001 - level-based: the next tick tries again
                    if is_database_unreachable(exc):
                        log.warning("rollout controller: database unreachable: %s", exc)
                    else:
                        log.exception("rollout controller tick failed")
                try:
                    await asyncio.wait_for(stop.wait(), self.tick_seconds)
                except TimeoutError:
                    pass
        finally:
            if self.leader:
                try:
                    async with self.sessions() as session:
                        await rollouts_service.release_lease(session, name=LEASE_NAME, holder=self.holder)
                except Exception as exc:  # noqa: BLE001 - the lease expires by itself anyway
                    log.warning("rollout controller: could not release the lease: %s", exc)
                self.leader = False

    async def tick(self) -> None:
        """One look at every running rollout; nothing happens unless this replica holds the lease."""
        self.ticks += 1
        async with self.sessions() as session:
            leader = await rollouts_service.hold_lease(session, name=LEASE_NAME, holder=self.holder,
                                                       ttl_seconds=self.lease_seconds)
            await session.commit()
            if leader != self.leader:
                log.info("rollout controller %s %s the lease", self.holder, "holds" if leader else "lost")
            self.leader = leader
            if not leader:
                return
            running = [rollout.id for _, rollout in await rollouts_service.running(session)]
        for rollout_id in running:
            try:
                await self._step(rollout_id)
            except Exception:  # noqa: BLE001 - one rollout's trouble does not stop the others
                log.exception("rollout %d: tick failed", rollout_id)

    async def _step(self, rollout_id: int) -> None:
        async with self.sessions() as session:
            # The lease is extended in the transaction that decides (see the module docstring: fencing).
            if not await rollouts_service.hold_lease(session, name=LEASE_NAME, holder=self.holder,
                                                     ttl_seconds=self.lease_seconds):
                self.leader = False
                await session.rollback()
                return
            # Locks in the API's order (model, then rollout), so a pause racing a tick waits rather than deadlocks.
            model_id = (await session.scalars(select(Rollout.model_id).where(Rollout.id == rollout_id))).one()
            model = (await session.scalars(select(Model).where(Model.id == model_id).with_for_update())).one()
            rollout = (await session.scalars(select(Rollout).where(Rollout.id == rollout_id)
                                             .with_for_update())).one()
            if rollout.state is not RolloutState.RUNNING:
                await session.commit()
                return
            if rollout.phase is RolloutPhase.SHADOW:
                await self._shadow_phase(session, model=model, rollout=rollout)
                return
            step = rollout.steps[rollout.step_index]
            if not await self._candidate_ready(session, model=model, rollout=rollout, pools=step.get("pools")):
                rollout.step_started_at = utcnow()
                await rollouts_service.record_verdict(session, rollout=rollout, verdict=Verdict.CONTINUE.value,
                                                      reason="waiting for the candidate to be ready", per_arch={})
                await session.commit()
                return
            started = rollout.step_started_at or utcnow()
            elapsed = max(0.0, (utcnow() - started).total_seconds())
            candidate, baseline = await self._figures(model.name, rollout, since=started.timestamp())
            decision = decide(candidate, baseline, elapsed_seconds=elapsed,
                              pause_seconds=float(step.get("pause_seconds") or 0),
                              config=rollouts_service.analysis_config(rollout))
            await rollouts_service.record_verdict(session, rollout=rollout, verdict=decision.verdict.value,
                                                  reason=decision.reason, per_arch=decision.per_arch)
            step_index = rollout.step_index
            if decision.verdict is Verdict.FAIL:
                await rollouts_service.roll_back(session, model=model, rollout=rollout, verdict_reason=decision.reason,
                                                 per_arch=decision.per_arch, publisher=self.publisher)
                self.decisions.append((rollout.id, step_index, "rollout.rolled_back"))
                log.warning("rollout %d of %s rolled back: %s", rollout.id, model.name, decision.reason)
                self.webhook.send("rollout.rolled_back", model=model.name, reason=decision.reason,
                                  evidence=decision.per_arch, **rollouts_service.event_state(rollout))
            elif decision.verdict is Verdict.PASS:
                event = await rollouts_service.advance(session, model=model, rollout=rollout,
                                                       verdict_reason=decision.reason, publisher=self.publisher)
                self.decisions.append((rollout.id, step_index, event))
                log.info("rollout %d of %s: %s", rollout.id, model.name, event)
                self.webhook.send(event, model=model.name, reason=decision.reason,
                                  **rollouts_service.event_state(rollout))
            else:
                await session.commit()

    async def _shadow_phase(self, session: AsyncSession, *, model: Model, rollout: Rollout) -> None:
        """Judge the candidate's mirrored answers against the primary's, per GPU architecture of the candidate."""
        assert rollout.shadow is not None
        if not await self._candidate_ready(session, model=model, rollout=rollout, pools=None):
            rollout.step_started_at = utcnow()
            await rollouts_service.record_verdict(session, rollout=rollout, verdict=Verdict.CONTINUE.value,
                                                  reason="shadow phase: waiting for the candidate to be ready",
                                                  per_arch={})
            await session.commit()
            return
        started = rollout.step_started_at or utcnow()
        elapsed = max(0.0, (utcnow() - started).total_seconds())
        config = rollouts_service.parity_config(rollout)
        judged = {arch: judge_parity(counts, elapsed_seconds=elapsed, phase_seconds=float(rollout.shadow["seconds"]),
                                     config=config)
                  for arch, counts in (await self._parity(model.name, rollout, since=started.timestamp())).items()}
        per_arch = {arch: _json_safe(j.as_dict()) for arch, j in judged.items()}
        failed = [f"{arch}: {j.reason}" for arch, j in judged.items() if j.verdict is Verdict.FAIL]
        waiting = [f"{arch}: {j.reason}" for arch, j in judged.items() if j.verdict is Verdict.CONTINUE]
        if failed:
            verdict, reason = Verdict.FAIL, "; ".join(failed)
        elif not judged:
            verdict, reason = Verdict.CONTINUE, "no mirrored answer of the candidate compared yet"
        elif waiting:
            verdict, reason = Verdict.CONTINUE, "; ".join(waiting)
        else:
            verdict, reason = Verdict.PASS, "; ".join(f"{arch}: {j.reason}" for arch, j in judged.items())
        reason = f"shadow phase: {reason}"
        await rollouts_service.record_verdict(session, rollout=rollout, verdict=verdict.value, reason=reason,
                                              per_arch=per_arch)
        if verdict is Verdict.FAIL:
            await rollouts_service.roll_back(session, model=model, rollout=rollout, verdict_reason=reason,
                                             per_arch=per_arch, publisher=self.publisher)
            self.decisions.append((rollout.id, -1, "rollout.rolled_back"))
            log.warning("rollout %d of %s rolled back: %s", rollout.id, model.name, reason)
            self.webhook.send("rollout.rolled_back", model=model.name, reason=reason, evidence=per_arch,
                              **rollouts_service.event_state(rollout))
        elif verdict is Verdict.PASS:
            event = await rollouts_service.end_shadow_phase(session, model=model, rollout=rollout,
                                                            verdict_reason=reason, publisher=self.publisher)
            self.decisions.append((rollout.id, -1, event))
            log.info("rollout %d of %s: %s", rollout.id, model.name, event)
            self.webhook.send(event, model=model.name, reason=reason, **rollouts_service.event_state(rollout))
        else:
            await session.commit()

    async def _parity(self, model: str, rollout: Rollout, *, since: float) -> dict[str, ParityCounts]:
        """Per GPU architecture of the candidate, its comparisons (as the shadow) since ``since``, over outputs."""
        merged = parity_service.merge(model, 0, await self.parity_store.since(model, since))
        sums: dict[str, dict[str, Any]] = {}
        for pair in merged.pairs:
            if pair.shadow_version != rollout.candidate:
                continue
            arch = pair.shadow_gpu_arch or pair.primary_gpu_arch or "unknown"
            total = sums.setdefault(arch, {"compared": 0, "mismatched": 0, "rows": 0, "agree": 0,
                                           "histogram": [0] * (len(merged.error_bounds) + 1)})
            total["compared"] += pair.compared
            for output in pair.outputs:
                total["mismatched"] += output.shape_mismatch + output.dtype_mismatch + output.missing
                total["rows"] += output.top1_rows
                total["agree"] += round((output.top1_agreement or 0.0) * output.top1_rows)
                for i, count in enumerate(output.max_abs_histogram[:len(total["histogram"])]):
                    total["histogram"][i] += count
        return {arch: ParityCounts(t["compared"], t["mismatched"], t["rows"], t["agree"],
                                   tuple(merged.error_bounds), tuple(t["histogram"])) for arch, t in sums.items()}

    async def _candidate_ready(self, session: AsyncSession, *, model: Model, rollout: Rollout,
                               pools: Sequence[str] | None) -> bool:
        query = (select(Deployment.id).join(Version, Version.id == Deployment.version_id)
                 .join(Pool, Pool.id == Deployment.pool_id)
                 .where(Version.model_id == model.id, Version.version == rollout.candidate,
                        Deployment.ready_replicas > 0))
        if pools:
            query = query.where(Pool.name.in_(list(pools)))
        return (await session.scalars(query.limit(1))).first() is not None

    async def _figures(self, model: str, rollout: Rollout, *,
                       since: float) -> tuple[dict[str, ArmCounts], dict[str, ArmCounts]]:
        """Per GPU architecture, what each of the two versions served of its own requests since ``since``."""
        now = time.time()
        seconds = stats_service.slot_seconds_for(int(now - since) + 1, self.store.retention)
        # The slot holding the step's start also holds a little before it: the same candidate at the previous
        # weight, which may count; before the first step it is whatever ran before the rollout, which may not.
        rounding = math.ceil if rollout.step_index == 0 else math.floor
        start = int(rounding(since / seconds)) * seconds
        slots = await self.store.slots(model, seconds=seconds, start=start, end=int(now // seconds) * seconds + seconds)
        windows: dict[tuple[str, str], VersionWindow] = {}
        for _, _, cells in slots:
            for (assigned, served, _pool, arch), cell in cells.items():
                if assigned == served and served in (rollout.candidate, rollout.baseline) and arch:
                    windows.setdefault((served, arch), VersionWindow()).add(cell)
        arms: tuple[dict[str, ArmCounts], dict[str, ArmCounts]] = ({}, {})
        for (version, arch), window in windows.items():
            side = arms[0] if version == rollout.candidate else arms[1]
            side[arch] = ArmCounts.of(window.requests, window.errors, window.buckets)
        return arms
