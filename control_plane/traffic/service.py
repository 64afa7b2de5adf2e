"""Traffic policies: validated, immutable revisions with minimal-movement allocations."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from control_plane.audit import service as audit_service
from control_plane.auth.service import Actor
from control_plane.db import flush_or_raise
from control_plane.errors import InvalidInput, NotFound, PreconditionFailed, PreconditionRequired
from control_plane.notifications import SnapshotPublisher
from control_plane.reconciler.models import Deployment
from control_plane.registry import service as registry_service
from control_plane.registry.models import Model, Version, VersionStatus
from control_plane.traffic import snapshot as snapshot_service
from control_plane.traffic.models import TrafficRevision
from control_plane.traffic.schemas import MAX_REVISION, HeaderMatchIn, TrafficPut
from router.routing import ModelRouting, Range, Route, allocate, bucket_counts, decide
from router.snapshot import SnapshotRule


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
    return {"revision": revision.revision, "default_version": revision.default_version,
            "splits": revision.splits, "rules": revision.rules}


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


async def list_revisions(session: AsyncSession, *, model: Model, limit: int = 50,
                         before: int | None = None) -> Sequence[TrafficRevision]:
    """History, newest first."""
    query = (select(TrafficRevision).where(TrafficRevision.model_id == model.id)
             .order_by(TrafficRevision.revision.desc()).limit(limit))
    if before is not None and before <= MAX_REVISION:  # beyond the column's range: no bound at all
        query = query.where(TrafficRevision.revision < before)
    return (await session.scalars(query)).all()


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


def uses_of(revision: TrafficRevision, version: str) -> list[str]:
    """How the policy still routes to ``version`` (empty when it doesn't)."""
    uses = [f"has {s['weight']}% of traffic" for s in revision.splits if s["version"] == version and s["weight"] > 0]
    if revision.default_version == version:
        uses.append("is the default version")
    uses += [f"is the target of rule {r['name']!r}" for r in revision.rules if r["version"] == version]
    return uses


async def _validate(session: AsyncSession, *, model: Model, body: TrafficPut) -> list[tuple[str, int]]:
    """Every rule of a policy a release manager can trust; returns the bucket counts."""
    problems: list[dict[str, str]] = []
    versions = {v.version: v for v in (await session.scalars(
        select(Version).options(selectinload(Version.engines)).where(Version.model_id == model.id)
    )).all()}
    runnable_cache: dict[str, bool] = {}

    async def check(field: str, label: str, *, must_run: bool) -> None:
        version = versions.get(label)
        if version is None:
            problems.append({"field": field, "reason": f"model {model.name!r} has no version {label!r}"})
        elif version.status == VersionStatus.RETIRED:
            problems.append({"field": field, "reason": f"version {label!r} is retired"})
        elif must_run:
            if label not in runnable_cache:
                runnable_cache[label] = bool(await registry_service.runnable_pools(session, version=version))
            if not runnable_cache[label]:
                problems.append({"field": field, "reason": (
                    f"version {label!r} has no engine that any pool can run "
                    "(needs a pool with the engine's gpu_arch and trt_version)")})

    seen: set[str] = set()
    for i, split in enumerate(body.splits):
        if split.version in seen:
            problems.append({"field": f"splits[{i}].version", "reason": f"version {split.version!r} is listed twice"})
        seen.add(split.version)
        await check(f"splits[{i}].version", split.version, must_run=split.weight > 0)
    total = sum((s.weight for s in body.splits), Decimal(0))
    if total != 100:
        problems.append({"field": "splits", "reason": f"weights sum to {total.normalize():f}, not 100"})
    names: set[str] = set()
    for i, rule in enumerate(body.rules):
        if rule.name in names:
            problems.append({"field": f"rules[{i}].name", "reason": f"rule name {rule.name!r} is used twice"})
        names.add(rule.name)
        if isinstance(rule.match, HeaderMatchIn) and rule.match.header.lower() == model.key_header:
            problems.append({"field": f"rules[{i}].match.header",
                             "reason": "that is the routing key header; use key_in to match routing keys"})
        await check(f"rules[{i}].version", rule.version, must_run=True)
    await check("default_version", body.default_version, must_run=True)
    if problems:
        raise InvalidInput("; ".join(f"{p['field']}: {p['reason']}" for p in problems), problems)
    return bucket_counts((s.version, s.weight) for s in body.splits)


def _rules_json(body: TrafficPut) -> list[dict[str, Any]]:
    return [r.model_dump(by_alias=True, mode="json") for r in body.rules]


def default_note(revision: TrafficRevision, *, anonymous: str) -> str | None:
    """What the default version does when the split gives it 0% (None when it has a share).

    The rule, the same in the API and the UI: the default version must be
    deployable, and it is the fallback. With 0% of the split it serves no user
    by choice, only requests whose version has no ready backend (and, under the
    'default' anonymous policy, requests without a routing key).
    """
    default = revision.default_version
    if default is None or any(s["version"] == default and s["weight"] > 0 for s in revision.splits):
        return None
    also = " and requests without a routing key" if anonymous == "default" else ""
    return (f"default version {default} has 0% of the split: it is the fallback only, serving requests whose "
            f"version has no ready backend{also}")


def same_policy(revision: TrafficRevision, body: TrafficPut) -> bool:
    """Whether ``body`` routes exactly as ``revision`` does (the reason alone changes nothing)."""
    return (revision.default_version == body.default_version
            and [(s["version"], Decimal(str(s["weight"]))) for s in revision.splits]
            == [(s.version, s.weight) for s in body.splits]
            and revision.rules == _rules_json(body))


async def put(session: AsyncSession, *, model_name: str, body: TrafficPut, if_match: str | None, actor: Actor,
              publisher: SnapshotPublisher) -> TrafficRevision:
    """Write a new revision if ``if_match`` names the live one (optimistic concurrency).

    A policy identical to the live one writes nothing and returns the live revision.
    """
    if if_match is None:
        raise PreconditionRequired("PUT traffic needs If-Match with the ETag from GET "
                                   "(so two release managers never overwrite each other)")
    expected = parse_etag(if_match)
    model = await registry_service.get_model_or_raise(session, name=model_name, for_update=True)
    current = await get_current(session, model=model)
    live = current.revision if current else 0
    if expected != live:
        raise PreconditionFailed(
            f"traffic policy of {model.name!r} changed: you edited revision {if_match}, the live one is {live}",
            {"live": revision_state(current), "live_etag": etag(live),
             "changed_by": current.created_by if current else None},
        )
    counts = await _validate(session, model=model, body=body)
    if current is not None and same_policy(current, body):
        return current  # a revision identical to the live one would only be noise in the history
    previous: list[Range] | None = None
    if current is not None and current.salt == model.salt:
        previous = [(s, e, v) for s, e, v in current.allocation]
    allocation = allocate(previous, counts)
    revision = TrafficRevision(
        model_id=model.id, revision=live + 1, default_version=body.default_version,
        splits=[{"version": s.version, "weight": float(s.weight)} for s in body.splits],
        rules=_rules_json(body), allocation=[list(r) for r in allocation], salt=model.salt,
        reason=body.reason, reapplied_from=body.reapplied_from, created_by=actor.name,
    )
    session.add(revision)
    # Another writer may have taken live + 1 between our read and our insert.
    await flush_or_raise(session, PreconditionFailed(
        f"traffic policy of {model_name!r} changed while saving; reload and retry"))
    routed = {s.version for s in body.splits if s.weight > 0} | {r.version for r in body.rules}
    routed.add(body.default_version)
    for version in (await session.scalars(
        select(Version).where(Version.model_id == model.id, Version.version.in_(routed),
                              Version.status == VersionStatus.REGISTERED.value)
    )).all():
        version.status = VersionStatus.ACTIVE.value
    await audit_service.record(
        session, actor=actor, action="traffic.reapply" if body.reapplied_from else "traffic.update",
        target_type="traffic", target=model.name, model=model.name, before=revision_state(current),
        after=revision_state(revision), reason=body.reason,
    )
    await snapshot_service.bump(session, model_id=model.id)
    await publisher.commit(session)
    return revision


async def rebucket(session: AsyncSession, *, model: Model, actor: Actor, reason: str) -> TrafficRevision | None:
    """After a salt change: the same weights, a fresh contiguous layout (everyone reshuffles)."""
    current = await get_current(session, model=model)
    if current is None:
        return None
    counts = bucket_counts((s["version"], s["weight"]) for s in current.splits)
    revision = TrafficRevision(
        model_id=model.id, revision=current.revision + 1, default_version=current.default_version,
        splits=current.splits, rules=current.rules, allocation=[list(r) for r in allocate(None, counts)],
        salt=model.salt, reason=reason or "salt changed: rebucket", created_by=actor.name,
    )
    session.add(revision)
    await session.flush()
    await audit_service.record(session, actor=actor, action="traffic.rebucket", target_type="traffic",
                               target=model.name, model=model.name, before=revision_state(current),
                               after=revision_state(revision), reason=reason)
    return revision


def compiled(model: Model, revision: TrafficRevision) -> ModelRouting:
    """The router's view of a revision (the same code the router runs)."""
    return ModelRouting.build(
        name=model.name, key_header=model.key_header, salt=revision.salt, anonymous=model.anonymous,
        default_version=revision.default_version,
        rules=[SnapshotRule.model_validate(r).compiled() for r in revision.rules],
        allocation=[(s, e, v) for s, e, v in revision.allocation],
    )


async def ready_versions(session: AsyncSession, *, model: Model) -> set[str]:
    """Versions of ``model`` with at least one ready backend."""
    return set((await session.scalars(
        select(Version.version).join(Deployment, Deployment.version_id == Version.id)
        .where(Version.model_id == model.id, Deployment.ready_replicas > 0,
               Version.status != VersionStatus.RETIRED.value)
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
    everyone = {s["version"] for s in current.splits} | {current.default_version or ""}
    everyone |= {r["version"] for r in current.rules}
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
