"""Build the routing snapshot from the database (its revision is ``control_plane.changes``'s counter).

The snapshot's shape is owned by ``router.snapshot`` (the router validates
what it receives with the same models).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import Subquery

from control_plane.changes import current_revision
from control_plane.deployments.models import Deployment
from control_plane.registry.models import Model, Pool, Version, VersionStatus
from control_plane.traffic.models import TrafficRevision, stored_policy


def latest_revisions(model_ids: Iterable[int] | None = None) -> Subquery:
    """(model_id, revision) of each model's live traffic revision, as a subquery to join."""
    query = (select(TrafficRevision.model_id, func.max(TrafficRevision.revision).label("revision"))
             .group_by(TrafficRevision.model_id))
    if model_ids is not None:
        query = query.where(TrafficRevision.model_id.in_(model_ids))
    return query.subquery()


async def build(session: AsyncSession, *, model_ids: set[int] | None = None) -> dict[str, Any]:
    """The snapshot as plain data, read in a handful of set-based queries (only ``model_ids`` if given)."""
    # Read the revision first: everything after is at least as new as it.
    revision = await current_revision(session)
    latest = latest_revisions(model_ids)
    policy_query = (
        select(Model.id, Model.name, Model.key_header, Model.salt, Model.anonymous, TrafficRevision.revision,
               TrafficRevision.default_version, TrafficRevision.splits, TrafficRevision.rules,
               TrafficRevision.allocation)
        .join(latest, latest.c.model_id == Model.id)
        .join(TrafficRevision, (TrafficRevision.model_id == latest.c.model_id)
              & (TrafficRevision.revision == latest.c.revision))
    )
    version_query = (select(Version.id, Version.model_id, Version.version)
                     .where(Version.status != VersionStatus.RETIRED))
    ready_query = (select(Deployment.version_id, Deployment.endpoints, Pool.name, Pool.gpu_arch)
                   .join(Pool, Pool.id == Deployment.pool_id).where(Deployment.ready_replicas > 0))
    if model_ids is not None:
        policy_query = policy_query.where(Model.id.in_(model_ids))
        version_query = version_query.where(Version.model_id.in_(model_ids))
        ready_query = ready_query.join(Version, Version.id == Deployment.version_id).where(
            Version.model_id.in_(model_ids))
    policies = (await session.execute(policy_query)).all()
    versions = (await session.execute(version_query)).all()
    ready = (await session.execute(ready_query)).all()

    endpoints_by_version: dict[int, list[dict[str, str]]] = {}
    for version_id, endpoints, pool, gpu_arch in ready:
        bucket = endpoints_by_version.setdefault(version_id, [])
        bucket.extend({"url": e["url"], "pool": pool, "gpu_arch": gpu_arch} for e in endpoints or ())
    versions_by_model: dict[int, dict[str, Any]] = {}
    for version_id, model_id, label in versions:
        versions_by_model.setdefault(model_id, {})[label] = {"endpoints": endpoints_by_version.get(version_id, [])}

    models: dict[str, Any] = {}
    for row in policies:
        if not row.allocation:
            continue
        models[row.name] = {
            "key_header": row.key_header,
            "salt": row.salt,
            "anonymous": row.anonymous,
            **stored_policy(row.default_version, row.splits, row.rules).to_json(),
            "traffic_revision": row.revision,
            "allocation": row.allocation,
            "versions": versions_by_model.get(row.id, {}),
        }
    return {"revision": revision, "generated_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "models": models}
