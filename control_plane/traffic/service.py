"""Traffic policies: validated, immutable revisions with minimal-movement allocations."""

from __future__ import annotations

import enum
import random
from collections.abc import Collection, Mapping, Sequence
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from control_plane import changes
from control_plane.audit import service as audit_service
from control_plane.auth.service import Actor
from control_plane.changes import Committer
from control_plane.db import flush_or_raise
from control_plane.errors import Conflict, InvalidInput, NotFound, PreconditionFailed, PreconditionRequired
from control_plane.deployments.models import Deployment
from control_plane.registry import service as registry_service
from control_plane.registry.service import LivePolicy
from control_plane.registry.models import Model, Version, VersionStatus
from control_plane.traffic import snapshot as snapshot_service
from control_plane.traffic.models import TrafficRevision
from control_plane.traffic.schemas import MAX_REVISION, TrafficPut
from router.policy import Policy, Problem
from router.routing import ModelRouting, Range, Route, allocate, decide


def etag(revision: int) -> str:
    return f'"{revision}"'


def parse_etag(value: str) -> int | None:
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    value = value.strip('"')
    # isdigit() alone admits "²" and 5000-digit numbers, which int() refuses; no revision has 19 digits.
    return int(value) if value.isascii() and value.isdigit() and len(value) < 19 else None


def revision_state(revision: TrafficRevision | None) -> dict[str, Any] | None:
    if revision is None:
        return None
    return {"revision": revision.revision, **revision.policy.to_json()}


def audit_states(previous: TrafficRevision | None,
                 revision: TrafficRevision) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(before, after) for the audit log: weights and revision numbers, and only which rules changed.

    The revisions themselves are immutable and kept, so the event refers to them rather than holding two
    copies of allow-lists that may run to thousands of values.
    """
    def summary(r: TrafficRevision) -> dict[str, Any]:
        policy = r.policy
        return {"revision": r.revision, "default_version": policy.default_version,
                "splits": [split.to_json() for split in policy.splits], "rule_count": len(policy.rules),
                "shadow": policy.shadow.to_json() if policy.shadow else None}

    old_rules = {rule.name: rule for rule in previous.policy.rules} if previous else {}
    new_rules = {rule.name: rule for rule in revision.policy.rules}
    rule_changes = {"added": sorted(new_rules.keys() - old_rules.keys()),
                    "removed": sorted(old_rules.keys() - new_rules.keys()),
                    "changed": sorted(n for n in new_rules.keys() & old_rules.keys() if new_rules[n] != old_rules[n])}
    # Not "rules": readers take before/after as a policy, and a policy's rules are a list.
    after = {**summary(revision), "rule_changes": {k: v for k, v in rule_changes.items() if v}}
    return (summary(previous) if previous else None), after


async def get_current(session: AsyncSession, *, model: Model) -> TrafficRevision | None:
    """The live revision of ``model``'s policy, or None before the first."""
    return (await session.scalars(
        select(TrafficRevision).where(TrafficRevision.model_id == model.id)
        .order_by(TrafficRevision.revision.desc()).limit(1)
    )).first()


async def current_by_model(session: AsyncSession, *, model_ids: Sequence[int]) -> dict[int, TrafficRevision]:
    """The live revision of each model that has one, in one query (lists of models)."""
    if not model_ids:
        return {}
    latest = snapshot_service.latest_revisions(model_ids)
    rows = (await session.scalars(select(TrafficRevision).join(
        latest, (TrafficRevision.model_id == latest.c.model_id) & (TrafficRevision.revision == latest.c.revision)
    ))).all()
    return {r.model_id: r for r in rows}


class _LivePolicies:
    """The registry's view of live policies (``registry.service.LivePolicies``)."""

    async def live(self, session: AsyncSession, *, model_ids: Sequence[int]) -> dict[int, LivePolicy]:
        return {model_id: LivePolicy(r.revision, r.policy)
                for model_id, r in (await current_by_model(session, model_ids=model_ids)).items()}

    async def rebucket(self, session: AsyncSession, *, model: Model, actor: Actor, reason: str) -> None:
        await rebucket(session, model=model, actor=actor, reason=reason)


LIVE_POLICIES: registry_service.LivePolicies = _LivePolicies()


async def list_revisions(session: AsyncSession, *, model: Model, limit: int = 50,
                         before: int | None = None) -> Sequence[TrafficRevision]:
    """History, newest first."""
    query = (select(TrafficRevision).where(TrafficRevision.model_id == model.id)
             .order_by(TrafficRevision.revision.desc()).limit(limit))
    if before is not None and before <= MAX_REVISION:  # beyond the column's range: no bound at all
        query = query.where(TrafficRevision.revision < before)
    return (await session.scalars(query)).all()


async def revisions_by_number(session: AsyncSession, *, model: Model,
                              numbers: Collection[int]) -> dict[int, TrafficRevision]:
    """The named revisions of ``model`` in one query (the audit refers to revisions by number)."""
    wanted = [n for n in numbers if 0 < n <= MAX_REVISION]
    if not wanted:
        return {}
    found = await session.scalars(select(TrafficRevision).where(
        TrafficRevision.model_id == model.id, TrafficRevision.revision.in_(wanted)))
    return {revision.revision: revision for revision in found}


async def get_revision_or_raise(session: AsyncSession, *, model: Model, revision: int) -> TrafficRevision:
    """One revision of ``model``'s policy."""
    if not 0 < revision <= MAX_REVISION:  # the column could not hold it, so asking Postgres would fail
        raise NotFound(f"model {model.name!r} has no traffic revision {revision}")
    found = (await session.scalars(
        select(TrafficRevision).where(TrafficRevision.model_id == model.id, TrafficRevision.revision == revision)
    )).first()
    if found is None:
        raise NotFound(f"model {model.name!r} has no traffic revision {revision}")
    return found


async def _validate(session: AsyncSession, *, model: Model, policy: Policy) -> list[tuple[str, int]]:
    """Every rule of a policy a release manager can trust; returns the bucket counts."""
    problems = policy.problems(key_header=model.key_header)
    versions = {v.version: v for v in (await session.scalars(
        select(Version).options(selectinload(Version.engines)).where(Version.model_id == model.id)
    )).all()}
    runnable_cache: dict[str, bool] = {}

    async def check(field: str, label: str, *, must_run: bool) -> None:
        version = versions.get(label)
        if version is None:
            problems.append(Problem(field, f"model {model.name!r} has no version {label!r}"))
        elif version.status == VersionStatus.RETIRED:
            problems.append(Problem(field, f"version {label!r} is retired"))
        elif must_run:
            if label not in runnable_cache:
                runnable_cache[label] = bool(await registry_service.runnable_pools(session, version=version))
            if not runnable_cache[label]:
                problems.append(Problem(field, (
                    f"version {label!r} has no engine that any pool can run "
                    "(needs a pool with the engine's gpu_arch and trt_version)")))

    for i, split in enumerate(policy.splits):
        await check(f"splits[{i}].version", split.version, must_run=split.weight > 0)
    for i, rule in enumerate(policy.rules):
        await check(f"rules[{i}].version", rule.version, must_run=True)
    if policy.default_version is not None:
        await check("default_version", policy.default_version, must_run=True)
    if policy.shadow is not None:
        await check("shadow.version", policy.shadow.version, must_run=True)
    if problems:
        raise InvalidInput("; ".join(f"{p.field}: {p.reason}" for p in problems),
                           [{"field": p.field, "reason": p.reason} for p in problems])
    return policy.bucket_counts()


def default_note(revision: TrafficRevision, *, anonymous: str) -> str | None:
    """What the default version does when the split gives it 0% (None when it has a share).

    The rule, the same in the API and the UI: the default version must be
    deployable, and it is the fallback. With 0% of the split it serves no user
    by choice, only requests whose version has no ready backend (and, under the
    'default' anonymous policy, requests without a routing key).
    """
    default = revision.policy.default_version
    if default is None or revision.policy.weights().get(default, 0) > 0:
        return None
    also = " and requests without a routing key" if anonymous == "default" else ""
    return (f"default version {default} has 0% of the split: it is the fallback only, serving requests whose "
            f"version has no ready backend{also}")


def check_not_held(model: Model, *, actor: Actor) -> None:
    """Refuse a change by anyone but the holder while the policy is held (a running rollout drives it)."""
    held = model.traffic_held_by
    if held is not None and held != actor.name:
        what = held.replace("rollout:", "rollout ", 1)
        raise Conflict(f"traffic of {model.name!r} is driven by {what}, which is running: pause or abort it "
                       "before changing traffic by hand", {"held_by": held})


async def put(session: AsyncSession, *, model_name: str, body: TrafficPut, if_match: str | None, actor: Actor,
              publisher: Committer) -> TrafficRevision:
    """Write a new revision if ``if_match`` names the live one (optimistic concurrency).

    A policy identical to the live one writes nothing and returns the live revision.
    """
    if if_match is None:
        raise PreconditionRequired("PUT traffic needs If-Match with the ETag from GET "
                                   "(so two release managers never overwrite each other)")
    expected = parse_etag(if_match)
    model = await registry_service.get_model_or_raise(session, name=model_name, for_update=True)
    check_not_held(model, actor=actor)
    current = await get_current(session, model=model)
    live = current.revision if current else 0
    if expected != live:
        raise PreconditionFailed(
            f"traffic policy of {model.name!r} changed: you edited revision {if_match}, the live one is {live}",
            {"live": revision_state(current), "live_etag": etag(live),
             "changed_by": current.created_by if current else None},
        )
    policy = body.policy()
    counts = await _validate(session, model=model, policy=policy)
    if current is not None and current.policy == policy:
        return current  # a revision identical to the live one would only be noise in the history
    previous: list[Range] | None = None
    if current is not None and current.salt == model.salt:
        previous = [(s, e, v) for s, e, v in current.allocation]
    allocation = allocate(previous, counts)
    revision = TrafficRevision(
        model_id=model.id, revision=live + 1, policy=policy, allocation=[list(r) for r in allocation],
        salt=model.salt, reason=body.reason, reapplied_from=body.reapplied_from, created_by=actor.name,
    )
    session.add(revision)
    # Another writer may have taken live + 1 between our read and our insert.
    await flush_or_raise(session, PreconditionFailed(
        f"traffic policy of {model_name!r} changed while saving; reload and retry"))
    for version in (await session.scalars(
        select(Version).where(Version.model_id == model.id, Version.version.in_(policy.referenced_versions()),
                              Version.status == VersionStatus.REGISTERED)
    )).all():
        version.status = VersionStatus.ACTIVE
    before, after = audit_states(current, revision)
    await audit_service.record(
        session, actor=actor, action="traffic.reapply" if body.reapplied_from else "traffic.update",
        target_type="traffic", target=model.name, model=model.name, before=before, after=after, reason=body.reason,
    )
    await changes.bump(session, model_id=model.id)
    await publisher.commit(session)
    return revision


async def rebucket(session: AsyncSession, *, model: Model, actor: Actor, reason: str) -> TrafficRevision | None:
    """After a salt change: the same weights, a fresh contiguous layout (everyone reshuffles)."""
    current = await get_current(session, model=model)
    if current is None:
        return None
    counts = current.policy.bucket_counts()
    revision = TrafficRevision(
        model_id=model.id, revision=current.revision + 1, policy=current.policy,
        allocation=[list(r) for r in allocate(None, counts)],
        salt=model.salt, reason=reason or "salt changed: rebucket", created_by=actor.name,
    )
    session.add(revision)
    await session.flush()
    before, after = audit_states(current, revision)
    await audit_service.record(session, actor=actor, action="traffic.rebucket", target_type="traffic",
                               target=model.name, model=model.name, before=before, after=after, reason=reason)
    return revision


def compiled(model: Model, revision: TrafficRevision) -> ModelRouting:
    """The router's view of a revision (the same code the router runs)."""
    return ModelRouting.build(
        name=model.name, key_header=model.key_header, salt=revision.salt, anonymous=model.anonymous,
        default_version=revision.policy.default_version, rules=revision.policy.compiled_rules(),
        allocation=[(s, e, v) for s, e, v in revision.allocation],
    )


async def ready_versions(session: AsyncSession, *, model: Model) -> set[str]:
    """Versions of ``model`` with at least one ready backend."""
    return set((await session.scalars(
        select(Version.version).join(Deployment, Deployment.version_id == Version.id)
        .where(Version.model_id == model.id, Deployment.ready_replicas > 0,
               Version.status != VersionStatus.RETIRED)
    )).all())


async def explain(session: AsyncSession, *, model_name: str, key: str | None,
                  headers: Mapping[str, str]) -> dict[str, Any]:
    """Which version a request with this key (and headers) gets, and why."""
    model = await registry_service.get_model_or_raise(session, name=model_name)
    current = await get_current(session, model=model)
    if current is None:
        raise InvalidInput.field("model", f"model {model.name!r} has no traffic policy yet")
    routing = compiled(model, current)
    request_headers = {k.lower(): v for k, v in headers.items()}
    if key is not None:
        request_headers[model.key_header] = key
    ready = await ready_versions(session, model=model)
    everyone = current.policy.referenced_versions()
    # Anonymous requests with a weighted policy pick a random bucket; a fixed seed keeps explanations repeatable.
    decision = decide(routing, request_headers, ready, rng=random.Random(0))
    policy = decide(routing, request_headers, everyone, rng=random.Random(0))
    return {
        "model": model.name, "key": key, "bucket": decision.bucket,
        "version": decision.version,
        "route": decision.route_header if decision.version else decision.route.value,
        "rule": decision.rule, "policy_version": policy.version if policy.route is not Route.UNAVAILABLE else None,
        "ready_versions": sorted(ready), "traffic_revision": current.revision,
    }


# --- quick actions: promote, roll back, re-apply (the UI, the API and later rollouts share them) ----------------

class Action(enum.StrEnum):
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    REAPPLY = "reapply"


def _weight(value: float | Decimal) -> str:
    return format(Decimal(str(value)).normalize(), "f")


async def action_put(session: AsyncSession, *, model: Model, current: TrafficRevision | None, action: Action,
                     version: str = "", source: int | None = None, reason: str = "") -> tuple[TrafficPut, str]:
    """The policy a quick action would write, and a sentence saying what it does (nothing is written)."""
    if current is None:
        raise InvalidInput.field("action", f"model {model.name!r} has no traffic policy yet")
    live = current.policy
    weights = {s.version: Decimal(str(s.weight)) for s in live.splits}
    default = live.default_version
    rules = live.rules
    shadow = live.shadow
    reapplied_from = None
    if action is Action.PROMOTE:
        already = weights.get(version) == 100
        weights.setdefault(version, Decimal(0))
        weights = {v: Decimal(100) if v == version else Decimal(0) for v in weights}
        default = version
        what = (f"{version} already has 100% of traffic; it becomes the default version (the fallback)." if already
                else f"{version} gets 100% of traffic and becomes the default version.")
    elif action is Action.ROLLBACK:
        if version == default:
            raise InvalidInput.field("version", f"{version} is the default version; promote another version instead")
        moved = weights.get(version, Decimal(0))
        if default is not None:
            weights.setdefault(default, Decimal(0))
        for label in weights:
            if label == version:
                weights[label] = Decimal(0)
            elif label == default:
                weights[label] += moved
        what = f"{version} gets 0% of traffic; its {_weight(moved)}% go back to the default version {default}."
    else:
        if source is None:
            raise InvalidInput.field("revision", "which revision to re-apply?")
        old = await get_revision_or_raise(session, model=model, revision=source)
        policy = old.policy
        weights = {s.version: Decimal(str(s.weight)) for s in policy.splits}
        default, rules, shadow, reapplied_from = policy.default_version, policy.rules, policy.shadow, old.revision
        what = (f"Revision {old.revision}'s policy ({splits_text(policy)}, default {policy.default_version}) "
                "becomes live again, as a new revision.")
    body = {"default_version": default, "splits": [{"version": v, "weight": _weight(w)} for v, w in weights.items()],
            "rules": [r.to_json() for r in rules], "shadow": {"version": shadow.version, "percent": _weight(shadow.percent)} if shadow else None,
            "reason": reason, "reapplied_from": reapplied_from}
    try:
        return TrafficPut.model_validate(body), what
    except ValidationError as exc:  # an old revision may not pass today's rules
        raise InvalidInput.field("action", f"this action cannot be applied: {exc}") from None


async def run_action(session: AsyncSession, *, model_name: str, action: Action, version: str = "",
                     source: int | None = None, reason: str = "", if_match: str | None, actor: Actor,
                     publisher: Committer) -> TrafficRevision:
    """Promote, roll back or re-apply as a new revision, under the same If-Match rule as ``put``."""
    model = await registry_service.get_model_or_raise(session, name=model_name)
    current = await get_current(session, model=model)
    body, _ = await action_put(session, model=model, current=current, action=action, version=version,
                               source=source, reason=reason)
    return await put(session, model_name=model_name, body=body, if_match=if_match, actor=actor, publisher=publisher)


def splits_text(policy: Policy) -> str:
    """ "3 95% · 4 5%" """
    return " · ".join(f"{s.version} {_weight(s.weight)}%" for s in policy.splits) or "–"
