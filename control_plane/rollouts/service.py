"""Rollouts: start, read, pause, resume, abort, promote, and the transitions the controller makes; no HTTP.

Every traffic change a rollout makes goes through ``traffic.service.put`` as
an ordinary audited revision whose actor is ``rollout:<id>``. While a rollout
is running, the model's ``traffic_held_by`` names it, and ``traffic.service``
refuses anyone else's change (409); a paused or finished rollout lets go.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from control_plane import changes
from control_plane.audit import service as audit_service
from control_plane.auth.service import Actor, Role
from control_plane.changes import Committer
from control_plane.db import utcnow
from control_plane.errors import Conflict, InvalidInput, NotFound
from control_plane.registry import service as registry_service
from control_plane.registry.models import Model, Pool, Version, VersionStatus
from control_plane.rollouts.analysis import AnalysisConfig, AnalysisError, ParityConfig
from control_plane.rollouts.models import (
    LIVE_STATES,
    ControllerLease,
    Rollout,
    RolloutPhase,
    RolloutState,
    RolloutVerdict,
)
from control_plane.rollouts.schemas import RolloutCreate
from control_plane.rollouts.webhook import Webhook
from control_plane.traffic import service as traffic_service
from control_plane.traffic.models import TrafficRevision
from control_plane.traffic.schemas import TrafficPut
from router.policy import Policy, Shadow

ANALYSIS_FIELDS = frozenset(f.name for f in dataclasses.fields(AnalysisConfig))
PARITY_FIELDS = frozenset({"min_top1_agreement", "max_abs_error"})


def rollout_actor(rollout: Rollout) -> Actor:
    return Actor(rollout.actor_name, Role.ADMIN)


def _analysed_phases(rollout: Rollout) -> int:
    """Every step but the last (at 100%, nothing left to compare with), and the shadow phase if any."""
    return max(1, len(rollout.steps) - 1 + (1 if rollout.shadow else 0))


def analysis_config(rollout: Rollout) -> AnalysisConfig:
    """The step analysis, with alpha shared among the analysed phases, so the whole rollout keeps it."""
    config = AnalysisConfig(**{k: v for k, v in rollout.analysis.items() if k in ANALYSIS_FIELDS})
    return dataclasses.replace(config, alpha=config.alpha / _analysed_phases(rollout))


def parity_config(rollout: Rollout) -> ParityConfig:
    """The shadow phase's limits, with its share of alpha and the steps' evidence minimum and design effect."""
    steps = AnalysisConfig(**{k: v for k, v in rollout.analysis.items() if k in ANALYSIS_FIELDS})
    limits = {k: v for k, v in rollout.analysis.items() if k in PARITY_FIELDS and v is not None}
    return ParityConfig(**limits, min_compared=steps.min_requests, alpha=steps.alpha / _analysed_phases(rollout),
                        variance_inflation=steps.variance_inflation)


# --- reads ----------------------------------------------------------------------------------------------


async def get_live(session: AsyncSession, *, model: Model) -> Rollout | None:
    """The model's running or paused rollout."""
    return (await session.scalars(select(Rollout).where(Rollout.model_id == model.id,
                                                        Rollout.state.in_(LIVE_STATES)))).first()


async def list_rollouts(session: AsyncSession, *, model_name: str, limit: int = 50) -> tuple[Model, Sequence[Rollout]]:
    """Newest first."""
    model = await registry_service.get_model_or_raise(session, name=model_name)
    rows = (await session.scalars(select(Rollout).where(Rollout.model_id == model.id)
                                  .order_by(Rollout.id.desc()).limit(limit))).all()
    return model, rows


async def get_or_raise(session: AsyncSession, *, model: Model, rollout_id: int, for_update: bool = False) -> Rollout:
    if not 0 < rollout_id < 2**31:
        raise NotFound(f"model {model.name!r} has no rollout {rollout_id}")
    query = select(Rollout).where(Rollout.model_id == model.id, Rollout.id == rollout_id)
    if for_update:
        query = query.with_for_update()
    found = (await session.scalars(query)).first()
    if found is None:
        raise NotFound(f"model {model.name!r} has no rollout {rollout_id}")
    return found


async def verdicts(session: AsyncSession, *, rollout: Rollout) -> list[RolloutVerdict]:
    """Most recent last."""
    return list((await session.scalars(select(RolloutVerdict).where(RolloutVerdict.rollout_id == rollout.id)
                                       .order_by(RolloutVerdict.id))).all())


async def latest_verdicts(session: AsyncSession, *, rollout_ids: Sequence[int]) -> dict[int, RolloutVerdict]:
    if not rollout_ids:
        return {}
    newest = (select(func.max(RolloutVerdict.id)).where(RolloutVerdict.rollout_id.in_(rollout_ids))
              .group_by(RolloutVerdict.rollout_id))
    rows = (await session.scalars(select(RolloutVerdict).where(RolloutVerdict.id.in_(newest)))).all()
    return {row.rollout_id: row for row in rows}


def event_state(rollout: Rollout) -> dict[str, Any]:
    """What the audit log and the webhook say of a rollout."""
    step = rollout.steps[rollout.step_index] if rollout.step_index < len(rollout.steps) else None
    return {"rollout": rollout.id, "candidate": rollout.candidate, "baseline": rollout.baseline,
            "state": rollout.state.value, "phase": rollout.phase.value, "step_index": rollout.step_index,
            "steps": len(rollout.steps), "weight": step["weight"] if step else None}


# --- start ----------------------------------------------------------------------------------------------


async def _version_for(session: AsyncSession, *, model: Model, label: str, field: str) -> Version:
    version = (await session.scalars(select(Version).options(selectinload(Version.engines))
                                     .where(Version.model_id == model.id, Version.version == label))).first()
    if version is None:
        raise InvalidInput.field(field, f"model {model.name!r} has no version {label!r}")
    if version.status == VersionStatus.RETIRED:
        raise InvalidInput.field(field, f"version {label!r} is retired")
    return version


def _check_weights(body: RolloutCreate) -> None:
    previous = Decimal(0)
    for i, step in enumerate(body.steps):
        if step.weight <= previous:
            raise InvalidInput.field(f"steps[{i}].weight", (
                f"weights must increase strictly: {step.weight} follows {previous}" if i else "must be above 0"))
        previous = step.weight
    last = len(body.steps) - 1
    if body.steps[last].weight != 100:
        raise InvalidInput.field(f"steps[{last}].weight",
                                 f"the last step must give the candidate 100%, not {body.steps[last].weight}")


async def _check_pools(session: AsyncSession, *, body: RolloutCreate, candidate: Version) -> None:
    runnable = {p.name for p in await registry_service.runnable_pools(session, version=candidate)}
    if not runnable:
        raise InvalidInput.field("candidate", f"version {candidate.version!r} has no engine that any pool can run")
    known = set((await session.scalars(select(Pool.name))).all())
    for i, step in enumerate(body.steps):
        for j, name in enumerate(step.pools or ()):
            if name not in known:
                raise InvalidInput.field(f"steps[{i}].pools[{j}]", f"no pool named {name!r}")
            if name not in runnable:
                raise InvalidInput.field(f"steps[{i}].pools[{j}]", (
                    f"pool {name!r} cannot run version {candidate.version!r} (no engine for its gpu_arch and "
                    "TensorRT version)"))


def _analysis(body: RolloutCreate) -> dict[str, Any]:
    given = body.analysis.model_dump(exclude_none=True)
    try:
        config = AnalysisConfig(**{k: v for k, v in given.items() if k in ANALYSIS_FIELDS})
    except AnalysisError as exc:
        raise InvalidInput.field(f"analysis.{exc.field}", exc.reason) from None
    return {**dataclasses.asdict(config), **{k: v for k, v in given.items() if k in PARITY_FIELDS}}


async def gate_evidence(session: AsyncSession, *, candidate: Version, baseline: Version,
                        max_p99_ratio: float) -> list[dict[str, Any]]:
    """The checks before step 1, per GPU architecture: an engine wherever the baseline serves, and trtexec p99."""
    candidate_pools = await registry_service.runnable_pools(session, version=candidate)
    baseline_pools = await registry_service.runnable_pools(session, version=baseline)
    candidate_archs = {p.gpu_arch for p in candidate_pools}
    evidence: list[dict[str, Any]] = []
    for arch in sorted({p.gpu_arch for p in baseline_pools}):
        pools = sorted(p.name for p in baseline_pools if p.gpu_arch == arch)
        if arch in candidate_archs:
            evidence.append({"gpu_arch": arch, "check": "engine", "passed": True,
                             "detail": f"candidate {candidate.version} can run on {arch}", "pools": pools})
            continue
        has_engine = any(e.gpu_arch == arch for e in candidate.engines)
        evidence.append({"gpu_arch": arch, "check": "engine", "passed": False, "pools": pools, "detail": (
            f"baseline {baseline.version} serves on {arch} (pools {', '.join(pools)}) but candidate "
            f"{candidate.version} " + ("has an engine for it that no pool's TensorRT version runs" if has_engine
                                       else "has no engine for it"))})
    engines_b = {e.gpu_arch: e for e in baseline.engines}
    for engine in candidate.engines:
        other = engines_b.get(engine.gpu_arch)
        p99_c = (engine.benchmark or {}).get("p99_ms")
        p99_b = (other.benchmark or {}).get("p99_ms") if other else None
        if not (isinstance(p99_c, int | float) and isinstance(p99_b, int | float) and p99_b > 0):
            continue
        ratio = p99_c / p99_b
        passed = ratio <= max_p99_ratio
        evidence.append({
            "gpu_arch": engine.gpu_arch, "check": "benchmark_p99", "passed": passed, "ratio": round(ratio, 4),
            "limit": max_p99_ratio, "candidate_p99_ms": p99_c, "baseline_p99_ms": p99_b,
            "detail": (f"trtexec p99 {p99_c:g} ms against {p99_b:g} ms on {engine.gpu_arch}: ratio {ratio:.2f} "
                       + ("within" if passed else "over") + f" the limit {max_p99_ratio:g}")})
    return evidence


async def start(session: AsyncSession, *, model_name: str, body: RolloutCreate, actor: Actor,
                publisher: Committer, webhook: Webhook | None = None) -> Rollout:
    """Validate, check the gates, create the rollout and apply its first step, in one transaction; then
    announce it on ``webhook`` (queued: never blocks)."""
    rollout = await _start(session, model_name=model_name, body=body, actor=actor, publisher=publisher)
    if webhook is not None:
        webhook.send("rollout.started", model=model_name, reason=body.reason, actor=actor.name,
                     **event_state(rollout))
    return rollout


async def _start(session: AsyncSession, *, model_name: str, body: RolloutCreate, actor: Actor,
                 publisher: Committer) -> Rollout:
    model = await registry_service.get_model_or_raise(session, name=model_name, for_update=True)
    live = await get_live(session, model=model)
    if live is not None:
        raise Conflict(f"model {model.name!r} already has rollout {live.id} ({live.state.value}): "
                       "abort it or wait for it to finish", {"rollout": live.id})
    _check_weights(body)
    analysis = _analysis(body)
    current = await traffic_service.get_current(session, model=model)
    if current is None:
        raise InvalidInput.field("baseline", f"model {model.name!r} has no traffic policy yet: set one first")
    baseline_label = body.baseline or current.policy.default_version
    if baseline_label is None:
        raise InvalidInput.field("baseline", "the live policy has no default version: name the baseline")
    candidate = await _version_for(session, model=model, label=body.candidate, field="candidate")
    baseline = await _version_for(session, model=model, label=baseline_label, field="baseline")
    if candidate.id == baseline.id:
        raise InvalidInput.field("candidate", f"version {candidate.version!r} is the baseline; a rollout moves "
                                              "traffic from the baseline to another version")
    await _check_pools(session, body=body, candidate=candidate)
    evidence = await gate_evidence(session, candidate=candidate, baseline=baseline,
                                   max_p99_ratio=body.gates.max_benchmark_p99_ratio)
    failed = [e for e in evidence if not e["passed"]]
    if failed and not body.override_gates:
        raise InvalidInput("gates: " + "; ".join(e["detail"] for e in failed),
                           [{"field": "gates", "reason": e["detail"], **e} for e in failed])
    rollout = Rollout(
        model_id=model.id, live_model_id=model.id, candidate=candidate.version, baseline=baseline.version,
        state=RolloutState.RUNNING, phase=RolloutPhase.SHADOW if body.shadow else RolloutPhase.STEPS, step_index=0,
        shadow=({"percent": float(body.shadow.percent), "seconds": body.shadow.seconds} if body.shadow else None),
        steps=[{"weight": float(s.weight), "pause_seconds": s.pause_seconds, "pools": s.pools} for s in body.steps],
        start_revision=current.revision, start_policy=current.policy.to_json(), analysis=analysis,
        gates=body.gates.model_dump(), gate_evidence=evidence, override_gates=body.override_gates,
        started_by=actor.name, reason=body.reason,
    )
    session.add(rollout)
    try:
        await session.flush()
    except IntegrityError:  # a concurrent start won the live slot
        await session.rollback()
        raise Conflict(f"model {model_name!r} already has a running rollout", {"model": model_name}) from None
    model.traffic_held_by = rollout.actor_name
    await audit_service.record(
        session, actor=actor, action="rollout.started", target_type="rollout", target=str(rollout.id),
        model=model.name, after={**event_state(rollout), "gate_evidence": evidence,
                                 "override_gates": body.override_gates, "steps_spec": rollout.steps},
        reason=body.reason + (" (gates overridden: " + "; ".join(e["detail"] for e in failed) + ")"
                              if failed else ""))
    if rollout.phase is RolloutPhase.SHADOW:
        await apply_shadow_phase(session, model=model, rollout=rollout, publisher=publisher,
                                 reason=f"rollout {rollout.id} started with a shadow phase: {body.reason}")
        return rollout
    if len(rollout.steps) == 1:  # one step, at 100%: nothing to judge against, so a promotion
        rollout.step_index = 1
        _finish(rollout, model, RolloutState.SUCCEEDED, "a single step at 100%: the candidate took all traffic")
        await audit_service.record(session, actor=actor, action="rollout.succeeded", target_type="rollout",
                                   target=str(rollout.id), model=model.name, after=event_state(rollout),
                                   reason=rollout.outcome)
        await apply_step(session, model=model, rollout=rollout, weight=100.0, publisher=publisher,
                         reason=f"rollout {rollout.id} started with a single step at 100%: {body.reason}")
        return rollout
    await apply_step(session, model=model, rollout=rollout, reason=f"rollout {rollout.id} started: {body.reason}",
                     publisher=publisher)
    return rollout


# --- traffic the rollout writes ------------------------------------------------------------------------


def _weight(value: float | Decimal) -> str:
    return format(Decimal(str(value)).normalize(), "f")


def step_policy(live: Policy, *, candidate: str, baseline: str, weight: float, default: str | None = None,
                reason: str, shadow: Shadow | None | bool = True) -> TrafficPut:
    """The live policy with the candidate at ``weight`` percent and the baseline at the rest (others at 0).

    ``shadow``: True keeps the live shadow; otherwise the shadow to set (None: none).
    """
    if shadow is True:
        shadow = live.shadow
    share = Decimal(str(weight))
    splits = {s.version: Decimal(0) for s in live.splits}
    splits[baseline] = Decimal(100) - share  # in decimals: 100 - 33.33 must be 66.67, not 66.670000000000002
    splits[candidate] = share
    body = {"default_version": default or live.default_version or baseline,
            "splits": [{"version": v, "weight": _weight(w)} for v, w in splits.items()],
            "rules": [r.to_json() for r in live.rules],
            "shadow": ({"version": shadow.version, "percent": _weight(shadow.percent)}
                       if isinstance(shadow, Shadow) else None),
            "reason": reason[:2000]}
    return TrafficPut.model_validate(body)


async def _write(session: AsyncSession, *, model: Model, rollout: Rollout, body: TrafficPut,
                 publisher: Committer) -> TrafficRevision:
    current = await traffic_service.get_current(session, model=model)
    revision = await traffic_service.put(
        session, model_name=model.name, body=body, if_match=traffic_service.etag(current.revision if current else 0),
        actor=rollout_actor(rollout), publisher=publisher)
    await publisher.commit(session)  # put writes nothing (and commits nothing) for an identical policy
    return revision


async def apply_step(session: AsyncSession, *, model: Model, rollout: Rollout, reason: str,
                     publisher: Committer, weight: float | None = None) -> TrafficRevision:
    """Give the candidate the current step's weight (or ``weight``); at 100% it becomes the default version.

    The step's clock restarts here; the controller restarts it again until the candidate is ready.
    """
    if weight is None:
        weight = float(rollout.steps[rollout.step_index]["weight"])
    rollout.step_started_at = utcnow()
    await changes.bump(session, model_id=model.id)  # the step's pools are a reconciler input
    current = await traffic_service.get_current(session, model=model)
    live = current.policy if current else Policy.from_json(rollout.start_policy)
    shadow: Shadow | None | bool = True
    if rollout.shadow and live.shadow is not None and live.shadow.version == rollout.candidate:
        shadow = Policy.from_json(rollout.start_policy).shadow  # the shadow phase's mirror ends with it
    body = step_policy(live, candidate=rollout.candidate, baseline=rollout.baseline, weight=weight,
                       default=rollout.candidate if weight >= 100 else None, reason=reason, shadow=shadow)
    return await _write(session, model=model, rollout=rollout, body=body, publisher=publisher)


async def apply_shadow_phase(session: AsyncSession, *, model: Model, rollout: Rollout, reason: str,
                             publisher: Committer) -> TrafficRevision:
    """Mirror the phase's share of requests to the candidate, the splits left as they are; its clock starts."""
    assert rollout.shadow is not None
    rollout.step_started_at = utcnow()
    current = await traffic_service.get_current(session, model=model)
    live = current.policy if current else Policy.from_json(rollout.start_policy)
    body = {**live.to_json(), "shadow": {"version": rollout.candidate, "percent": _weight(rollout.shadow["percent"])},
            "reason": reason[:2000]}
    return await _write(session, model=model, rollout=rollout, body=TrafficPut.model_validate(body),
                        publisher=publisher)


async def end_shadow_phase(session: AsyncSession, *, model: Model, rollout: Rollout, verdict_reason: str,
                           publisher: Committer) -> str:
    """The outputs agree: on to step 1 (its weight, the mirror as before the rollout). Returns the event name."""
    before = event_state(rollout)
    rollout.phase = RolloutPhase.STEPS
    rollout.step_index = 0
    reason = (f"rollout {rollout.id}: shadow phase passed ({verdict_reason}); candidate {rollout.candidate} to "
              f"{_weight(rollout.steps[0]['weight'])}%")
    if len(rollout.steps) == 1:
        rollout.step_index = 1
        _finish(rollout, model, RolloutState.SUCCEEDED, reason + " and the default version")
        action = "rollout.succeeded"
    else:
        action = "rollout.shadow_passed"
    await audit_service.record(session, actor=rollout_actor(rollout), action=action, target_type="rollout",
                               target=str(rollout.id), model=model.name, before=before, after=event_state(rollout),
                               reason=reason)
    await apply_step(session, model=model, rollout=rollout, reason=reason, publisher=publisher,
                     weight=float(rollout.steps[0]["weight"]))
    return action


async def restore(session: AsyncSession, *, model: Model, rollout: Rollout, reason: str,
                  publisher: Committer) -> TrafficRevision:
    """Make the policy live at the start live again (a rollback or an abort)."""
    start_policy = Policy.from_json(rollout.start_policy)
    body = {**start_policy.to_json(), "reason": reason[:2000], "reapplied_from": rollout.start_revision or None}
    await changes.bump(session, model_id=model.id)
    return await _write(session, model=model, rollout=rollout, body=TrafficPut.model_validate(body),
                        publisher=publisher)


def _finish(rollout: Rollout, model: Model, state: RolloutState, outcome: str) -> None:
    rollout.state = state
    rollout.phase = RolloutPhase.DONE
    rollout.live_model_id = None
    rollout.finished_at = utcnow()
    rollout.outcome = outcome[:10000]
    if model.traffic_held_by == rollout.actor_name:
        model.traffic_held_by = None


# --- transitions: people --------------------------------------------------------------------------------


async def _live_for_action(session: AsyncSession, *, model_name: str, rollout_id: int,
                           allowed: Sequence[RolloutState], verb: str) -> tuple[Model, Rollout]:
    model = await registry_service.get_model_or_raise(session, name=model_name, for_update=True)
    rollout = await get_or_raise(session, model=model, rollout_id=rollout_id, for_update=True)
    if rollout.state not in allowed:
        raise Conflict(f"rollout {rollout.id} is {rollout.state.value}: cannot {verb} it",
                       {"rollout": rollout.id, "state": rollout.state.value})
    return model, rollout


async def pause(session: AsyncSession, *, model_name: str, rollout_id: int, reason: str, actor: Actor,
                publisher: Committer) -> Rollout:
    """Stop judging and advancing; the traffic stays where it is and may be changed by hand."""
    model, rollout = await _live_for_action(session, model_name=model_name, rollout_id=rollout_id,
                                            allowed=(RolloutState.RUNNING,), verb="pause")
    before = event_state(rollout)
    rollout.state = RolloutState.PAUSED
    model.traffic_held_by = None
    await audit_service.record(session, actor=actor, action="rollout.paused", target_type="rollout",
                               target=str(rollout.id), model=model.name, before=before, after=event_state(rollout),
                               reason=reason)
    await publisher.commit(session)
    return rollout


async def resume(session: AsyncSession, *, model_name: str, rollout_id: int, reason: str, actor: Actor,
                 publisher: Committer) -> Rollout:
    """Run again from the current step, which starts over (its weight re-applied, its pause counted anew)."""
    model, rollout = await _live_for_action(session, model_name=model_name, rollout_id=rollout_id,
                                            allowed=(RolloutState.PAUSED,), verb="resume")
    before = event_state(rollout)
    rollout.state = RolloutState.RUNNING
    model.traffic_held_by = rollout.actor_name
    await audit_service.record(session, actor=actor, action="rollout.resumed", target_type="rollout",
                               target=str(rollout.id), model=model.name, before=before, after=event_state(rollout),
                               reason=reason)
    if rollout.phase is RolloutPhase.SHADOW:
        await apply_shadow_phase(session, model=model, rollout=rollout, publisher=publisher,
                                 reason=f"rollout {rollout.id} resumed in its shadow phase: {reason}")
        return rollout
    await apply_step(session, model=model, rollout=rollout, publisher=publisher,
                     reason=f"rollout {rollout.id} resumed at step {rollout.step_index + 1}: {reason}")
    return rollout


async def abort(session: AsyncSession, *, model_name: str, rollout_id: int, reason: str, actor: Actor,
                publisher: Committer) -> Rollout:
    """Restore the policy live at the start and end the rollout."""
    model, rollout = await _live_for_action(session, model_name=model_name, rollout_id=rollout_id,
                                            allowed=LIVE_STATES, verb="abort")
    before = event_state(rollout)
    _finish(rollout, model, RolloutState.ABORTED, f"aborted by {actor.name}: {reason}")
    await audit_service.record(session, actor=actor, action="rollout.aborted", target_type="rollout",
                               target=str(rollout.id), model=model.name, before=before, after=event_state(rollout),
                               reason=reason)
    await restore(session, model=model, rollout=rollout, publisher=publisher,
                  reason=f"rollout {rollout.id} aborted by {actor.name}: restore revision {rollout.start_revision}"
                         f"; {reason}")
    return rollout


async def promote(session: AsyncSession, *, model_name: str, rollout_id: int, reason: str, actor: Actor,
                  publisher: Committer) -> Rollout:
    """Skip to 100%: the candidate takes all traffic and becomes the default version."""
    model, rollout = await _live_for_action(session, model_name=model_name, rollout_id=rollout_id,
                                            allowed=LIVE_STATES, verb="promote")
    before = event_state(rollout)
    rollout.step_index = len(rollout.steps)
    _finish(rollout, model, RolloutState.SUCCEEDED, f"promoted by {actor.name}: {reason}")
    await audit_service.record(session, actor=actor, action="rollout.promoted", target_type="rollout",
                               target=str(rollout.id), model=model.name, before=before, after=event_state(rollout),
                               reason=reason)
    await apply_step(session, model=model, rollout=rollout, publisher=publisher, weight=100.0,
                     reason=f"rollout {rollout.id} promoted by {actor.name}: {reason}")
    return rollout


_ACTION_EVENTS = {"pause": "rollout.paused", "resume": "rollout.resumed", "abort": "rollout.aborted",
                  "promote": "rollout.promoted"}
ACTIONS = frozenset(_ACTION_EVENTS)


async def act(session: AsyncSession, verb: str, *, model_name: str, rollout_id: int, reason: str, actor: Actor,
              publisher: Committer, webhook: Webhook | None = None) -> Rollout:
    """A person's ``verb`` (one of ``ACTIONS``) on a rollout: committed, then announced on ``webhook``."""
    operation = {"pause": pause, "resume": resume, "abort": abort, "promote": promote}[verb]
    rollout = await operation(session, model_name=model_name, rollout_id=rollout_id, reason=reason, actor=actor,
                              publisher=publisher)
    if webhook is not None:
        webhook.send(_ACTION_EVENTS[verb], model=model_name, reason=reason, actor=actor.name, **event_state(rollout))
    return rollout


# --- transitions: the controller ------------------------------------------------------------------------


async def record_verdict(session: AsyncSession, *, rollout: Rollout, verdict: str, reason: str,
                         per_arch: dict[str, Any]) -> RolloutVerdict:
    """One row per step and outcome: a new row when the outcome changed, else the last row brought up to date.

    So the history stays short (waiting for readiness, judging, passed) while the
    latest verdict always carries the current evidence.
    """
    last = (await session.scalars(select(RolloutVerdict).where(RolloutVerdict.rollout_id == rollout.id)
                                  .order_by(RolloutVerdict.id.desc()).limit(1))).first()
    if last is not None and last.step_index == rollout.step_index and last.verdict == verdict \
            and bool(last.per_arch) == bool(per_arch):  # waiting for readiness, then judging figures: two rows
        last.at, last.reason, last.per_arch = utcnow(), reason[:10000], per_arch
        return last
    row = RolloutVerdict(rollout_id=rollout.id, step_index=rollout.step_index, verdict=verdict, reason=reason[:10000],
                         per_arch=per_arch)
    session.add(row)
    return row


async def advance(session: AsyncSession, *, model: Model, rollout: Rollout, verdict_reason: str,
                  publisher: Committer) -> str:
    """The step passed: the next step's weight, or success after the last. Returns the event name."""
    before = event_state(rollout)
    rollout.step_index += 1
    actor = rollout_actor(rollout)
    last = rollout.step_index == len(rollout.steps) - 1
    weight = rollout.steps[rollout.step_index]["weight"]
    reason = (f"rollout {rollout.id}: step {rollout.step_index} passed ({verdict_reason}); candidate "
              f"{rollout.candidate} to {_weight(weight)}%" + (" and the default version" if last else ""))
    if last:
        rollout.step_index = len(rollout.steps)
        _finish(rollout, model, RolloutState.SUCCEEDED, reason)
        action = "rollout.succeeded"
    else:
        action = "rollout.step_advanced"
    await audit_service.record(session, actor=actor, action=action, target_type="rollout", target=str(rollout.id),
                               model=model.name, before=before, after=event_state(rollout), reason=reason)
    await apply_step(session, model=model, rollout=rollout, reason=reason, publisher=publisher, weight=float(weight))
    return action


async def roll_back(session: AsyncSession, *, model: Model, rollout: Rollout, verdict_reason: str,
                    per_arch: dict[str, Any], publisher: Committer) -> None:
    """A FAIL verdict: restore the start policy, with the verdict and its evidence in the audit and the revision."""
    before = event_state(rollout)
    where = ("in its shadow phase" if rollout.phase is RolloutPhase.SHADOW else
             f"at step {rollout.step_index + 1} ({_weight(rollout.steps[rollout.step_index]['weight'])}%)")
    reason = f"rollout {rollout.id} rolled back {where}: verdict fail: {verdict_reason}"
    _finish(rollout, model, RolloutState.ROLLED_BACK, reason)
    evidence = {arch: judgement for arch, judgement in per_arch.items()}
    await audit_service.record(session, actor=rollout_actor(rollout), action="rollout.rolled_back",
                               target_type="rollout", target=str(rollout.id), model=model.name, before=before,
                               after={**event_state(rollout), "verdict": "fail", "evidence": evidence}, reason=reason)
    await restore(session, model=model, rollout=rollout, reason=reason, publisher=publisher)


async def running(session: AsyncSession) -> list[tuple[Model, Rollout]]:
    """Every running rollout with its model (what the controller looks at each tick)."""
    rows = (await session.execute(select(Model, Rollout).join(Rollout, Rollout.model_id == Model.id)
                                  .where(Rollout.state == RolloutState.RUNNING).order_by(Rollout.id))).all()
    return [(m, r) for m, r in rows]


async def step_pools(session: AsyncSession) -> dict[int, dict[str, frozenset[str]]]:
    """{model id: {candidate: pools}} for running rollouts whose current step names pools (a reconciler input).

    A paused rollout keeps its placement: pausing must not deploy the candidate
    somewhere new.
    """
    rows = (await session.scalars(select(Rollout).where(Rollout.state.in_(LIVE_STATES)))).all()
    placed: dict[int, dict[str, frozenset[str]]] = {}
    for rollout in rows:
        if rollout.step_index < len(rollout.steps) - 1:
            pools = rollout.steps[rollout.step_index].get("pools")
            if pools:
                placed.setdefault(rollout.model_id, {})[rollout.candidate] = frozenset(pools)
    return placed


# --- the leader lease -----------------------------------------------------------------------------------


async def hold_lease(session: AsyncSession, *, name: str, holder: str, ttl_seconds: float) -> bool:
    """Take or extend the lease ``name`` for ``holder`` inside the caller's transaction; False if another holds it.

    The UPDATE locks the row until the caller commits, so a competitor's
    takeover waits for (and then sees) this transaction's extension.
    """
    now = utcnow()
    expires = now + timedelta(seconds=ttl_seconds)
    taken = await session.execute(
        update(ControllerLease)
        .where(ControllerLease.name == name, (ControllerLease.holder == holder) | (ControllerLease.expires_at < now))
        .values(holder=holder, expires_at=expires))
    if taken.rowcount:  # type: ignore[attr-defined]
        return True
    if (await session.get(ControllerLease, name)) is not None:
        return False
    session.add(ControllerLease(name=name, holder=holder, expires_at=expires, acquired_at=now))
    try:
        await session.flush()
    except IntegrityError:  # another replica inserted it first
        await session.rollback()
        return False
    return True


async def release_lease(session: AsyncSession, *, name: str, holder: str) -> None:
    await session.execute(update(ControllerLease).where(ControllerLease.name == name, ControllerLease.holder == holder)
                          .values(expires_at=datetime.fromtimestamp(0, tz=utcnow().tzinfo)))
    await session.commit()
