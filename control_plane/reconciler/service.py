"""The reconciler's database side: load desired-state inputs, write deployment status back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from control_plane.traffic.publisher import SnapshotPublisher
from control_plane import changes
from control_plane.reconciler import desired
from control_plane.deployments.models import Deployment
from control_plane.reconciler.status import StatusRow
from control_plane.registry.models import Model, Pool, Version
from control_plane.rollouts import service as rollouts_service
from control_plane.traffic.models import TrafficRevision


def _tensors(raw: Any) -> tuple[desired.Tensor, ...]:
    return tuple(desired.Tensor(str(t["name"]), str(t["datatype"]), tuple(int(d) for d in t["shape"]))
                 for t in raw or ())


def _signature(raw: dict[str, Any] | None) -> desired.IoSignature | None:
    if not raw:
        return None
    return desired.IoSignature(inputs=_tensors(raw.get("inputs")), outputs=_tensors(raw.get("outputs")),
                               max_batch_size=int(raw.get("max_batch_size") or 0))


def _batching(raw: dict[str, Any] | None) -> desired.Batching | None:
    if raw is None:
        return None
    return desired.Batching(max_queue_delay_microseconds=int(raw.get("max_queue_delay_microseconds") or 0),
                            preferred_batch_size=tuple(int(n) for n in raw.get("preferred_batch_size") or ()))


def _model(model: Model, revision: TrafficRevision | None,
           placement: dict[str, frozenset[str]] | None = None) -> desired.ModelSpec:
    versions = tuple(
        desired.VersionSpec(
            id=v.id,
            label=v.version,
            precision=v.precision,
            trt_version=v.trt_version,
            status=v.status,
            warm=v.warm,
            engines=tuple(
                desired.EngineSpec(gpu_arch=e.gpu_arch, uri=e.uri, sha256=e.sha256, trt_version=e.trt_version,
                                   size_bytes=e.size_bytes)
                for e in v.engines
            ),
            signature=_signature(v.signature),
            batching=_batching(v.dynamic_batching),
        )
        for v in model.versions
    )
    replicas = {str(k): int(n) for k, n in (model.replicas or {}).items() if isinstance(n, int | float)}
    return desired.ModelSpec(id=model.id, name=model.name, versions=versions, traffic=revision.policy if revision is not None else None,
                             replicas=replicas, placement=placement or {})


def _pool(pool: Pool) -> desired.PoolSpec:
    return desired.PoolSpec(
        id=pool.id,
        name=pool.name,
        gpu_arch=pool.gpu_arch,
        kind=pool.kind,
        trt_version=pool.trt_version,
        namespace=pool.namespace,
        node_selector={str(k): str(v) for k, v in (pool.node_selector or {}).items()},
        runtime_image=pool.runtime_image,
        service_account=(pool.engine_credentials or {}).get("service_account"),
        credentials_secret=(pool.engine_credentials or {}).get("secret"),
    )


async def load_inputs(session: AsyncSession, *, kind: str) -> desired.Inputs:
    """Everything ``desired.plan`` needs, in five queries."""
    models = (await session.scalars(
        select(Model).options(selectinload(Model.versions).selectinload(Version.engines)).order_by(Model.id)
    )).all()
    latest = (select(TrafficRevision.model_id, func.max(TrafficRevision.revision).label("revision"))
              .group_by(TrafficRevision.model_id).subquery())
    revisions = {
        r.model_id: r
        for r in (await session.scalars(
            select(TrafficRevision).join(
                latest,
                (TrafficRevision.model_id == latest.c.model_id) & (TrafficRevision.revision == latest.c.revision),
            )
        )).all()
    }
    pools = (await session.scalars(select(Pool).order_by(Pool.id))).all()
    previous = (await session.scalars(
        select(Deployment).join(Pool, Pool.id == Deployment.pool_id).where(Pool.kind == kind)
    )).all()
    placements = await rollouts_service.step_pools(session)
    return desired.Inputs(
        models=tuple(_model(m, revisions.get(m.id), placements.get(m.id)) for m in models),
        pools=tuple(_pool(p) for p in pools),
        previous=tuple(
            desired.PreviousStatus(d.version_id, d.pool_id, d.desired_replicas, d.phase, d.draining_since)
            for d in previous
        ),
    )


def _values(row: StatusRow) -> dict[str, Any]:
    return {
        "desired_replicas": row.desired_replicas,
        "ready_replicas": row.ready_replicas,
        "endpoints": [{"url": url} for url in row.endpoints],
        "phase": row.phase,
        "message": row.message,
        "draining_since": row.draining_since,
    }


def _routing_view(d: Deployment) -> tuple[int, tuple[str, ...]]:
    ready = d.ready_replicas > 0
    return (1 if ready else 0, tuple(e.get("url", "") for e in d.endpoints or ()) if ready else ())


async def save_status(
    session: AsyncSession,
    *,
    kind: str,
    rows: Sequence[StatusRow],
    removed: Sequence[desired.DeploymentKey],
) -> tuple[bool, set[int]]:
    """Stage changed rows in ``session``; returns (anything written, versions whose routing changed).

    Rows that did not change are not touched, so a quiet resync writes nothing
    to the database either. Only rows of pools of ``kind`` are considered:
    external pools' rows belong to the API.
    """
    existing = {
        (d.version_id, d.pool_id): d
        for d in (await session.scalars(
            select(Deployment).join(Pool, Pool.id == Deployment.pool_id).where(Pool.kind == kind)
        )).all()
    }
    wrote = False
    routing: set[int] = set()
    for row in rows:
        values = _values(row)
        current = existing.get(row.key)
        if current is None:
            session.add(Deployment(version_id=row.version_id, pool_id=row.pool_id, **values))
            wrote = True
            if row.ready_replicas > 0:
                routing.add(row.version_id)
            continue
        if any(getattr(current, k) != v for k, v in values.items()):
            before = _routing_view(current)
            for k, v in values.items():
                setattr(current, k, v)
            wrote = True
            if before != row.routing_view():
                routing.add(row.version_id)
    for key in removed:
        current = existing.get(key)
        if current is not None:
            if current.ready_replicas > 0:
                routing.add(current.version_id)
            await session.delete(current)
            wrote = True
    return wrote, routing


# Past this many models one "anything may have changed" bump is cheaper than one per model.
_PER_MODEL_BUMPS = 16


async def _bump_snapshot(session: AsyncSession, version_ids: set[int]) -> None:
    """New snapshot revisions naming the models whose ready endpoints changed."""
    found = (await session.execute(select(Version.id, Version.model_id).where(Version.id.in_(version_ids)))).all()
    models = {model_id for _, model_id in found}
    if len(found) < len(version_ids) or len(models) > _PER_MODEL_BUMPS:
        await changes.bump(session)  # a version is gone, or many models changed: rebuild everything
        return
    for model_id in sorted(models):
        await changes.bump(session, model_id=model_id)


class DatabaseStore:
    """The reconciler loop's :class:`~control_plane.reconciler.loop.Store` over the database."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], publisher: SnapshotPublisher | None = None) -> None:
        self.sessions = sessions
        self.publisher = publisher

    async def load(self, *, kind: str) -> desired.Inputs:
        async with self.sessions() as session:
            return await load_inputs(session, kind=kind)

    async def save(self, rows: Sequence[StatusRow], removed: Sequence[desired.DeploymentKey], *, kind: str) -> bool:
        async with self.sessions() as session:
            wrote, routing = await save_status(session, kind=kind, rows=rows, removed=removed)
            if not wrote:
                return False
            if routing:
                # Ready endpoints are part of the routing snapshot: a new revision tells the routers.
                await _bump_snapshot(session, routing)
            if self.publisher is not None:
                await self.publisher.commit(session)
            else:
                await session.commit()
            return bool(routing)
