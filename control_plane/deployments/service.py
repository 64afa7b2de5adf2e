"""Deployment status: read per model, and written through the API for external pools (no HTTP here)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane import changes
from control_plane.audit import service as audit_service
from control_plane.auth.service import Actor
from control_plane.changes import Committer
from control_plane.db import utcnow
from control_plane.deployments.models import Deployment, Phase
from control_plane.errors import Conflict, Forbidden, InvalidInput
from control_plane.registry import service as registry_service
from control_plane.registry.endpoints import url_problem
from control_plane.registry.models import Model, Pool, PoolKind, Version, VersionStatus
from control_plane.registry.schemas import EndpointsPut

class _RegisteredEndpoints:
    """The registry's view of registered backends (``registry.service.RegisteredEndpoints``)."""

    async def on_pool(self, session: AsyncSession, *, pool_id: int) -> list[tuple[str, str]]:
        rows = (await session.execute(
            select(Model.name, Version.version, Deployment.endpoints).join(Version, Version.id == Deployment.version_id)
            .join(Model, Model.id == Version.model_id).where(Deployment.pool_id == pool_id)
        )).all()
        return [(f"{model}/{version}", e["url"]) for model, version, endpoints in rows for e in endpoints or ()]


REGISTERED_ENDPOINTS: registry_service.RegisteredEndpoints = _RegisteredEndpoints()


async def list_deployments(session: AsyncSession, *, model: Model) -> list[tuple[Deployment, Version, Pool]]:
    """Deployment status per (version, pool) of ``model``."""
    rows = (await session.execute(
        select(Deployment, Version, Pool).join(Version, Version.id == Deployment.version_id)
        .join(Pool, Pool.id == Deployment.pool_id).where(Version.model_id == model.id)
        .order_by(Version.id, Pool.name)
    )).all()
    return [(d, v, p) for d, v, p in rows]


async def put_external_endpoints(session: AsyncSession, *, model_name: str, version: str, body: EndpointsPut,
                                 actor: Actor, publisher: Committer) -> Deployment:
    """Register the backends of a version on an ``external`` pool (Triton fleets outside Kubernetes)."""
    # Locked: two first PUTs for one version and pool would both insert the deployment.
    model = await registry_service.get_model_or_raise(session, name=model_name, for_update=True)
    found = await registry_service.get_version_or_raise(session, model=model, version=version)
    if found.status == VersionStatus.RETIRED:
        raise Conflict(f"version {version!r} is retired")
    pool = (await session.scalars(select(Pool).where(Pool.name == body.pool))).first()
    if pool is None:
        raise InvalidInput.field("pool", f"no pool named {body.pool!r}")
    if pool.kind != PoolKind.EXTERNAL:
        raise InvalidInput.field("pool", f"pool {pool.name!r} is {pool.kind}; only external pools take endpoints "
                                         "(the reconciler manages the others)")
    if pool not in await registry_service.runnable_pools(session, version=found):
        raise InvalidInput.field("pool", f"version {version!r} has no engine for {pool.gpu_arch} with TensorRT "
                                         f"{pool.trt_version}, so it cannot run on pool {pool.name!r}")
    refused = [{"field": f"urls[{i}]", "reason": reason} for i, url in enumerate(body.urls)
               if (reason := url_problem(url, list(pool.allowed_endpoints or []))) is not None]
    if refused:
        # Forbidden, not invalid: the URL is well-formed, but only an admin can widen where traffic may go.
        raise Forbidden("; ".join(f"{r['field']}: {r['reason']}" for r in refused), refused)
    urls = list(dict.fromkeys(u.rstrip("/") for u in body.urls))
    deployment = (await session.scalars(
        select(Deployment).where(Deployment.version_id == found.id, Deployment.pool_id == pool.id)
    )).first()
    before = None
    if deployment is None:
        deployment = Deployment(version_id=found.id, pool_id=pool.id)
        session.add(deployment)
    else:
        before = {"urls": [e["url"] for e in deployment.endpoints]}
    deployment.endpoints = [{"url": u} for u in urls]
    deployment.desired_replicas = deployment.ready_replicas = len(urls)
    deployment.phase = Phase.READY if urls else Phase.PENDING
    deployment.message = "external endpoints registered through the API"
    deployment.updated_at = utcnow()
    await audit_service.record(session, actor=actor, action="endpoints.put", target_type="deployment",
                               target=f"{model.name}/{version}@{pool.name}", model=model.name, before=before,
                               after={"urls": urls})
    await changes.bump(session, model_id=model.id)
    await publisher.commit(session)
    return deployment
