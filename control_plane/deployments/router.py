"""Deployment endpoints: status per (version, pool), and the backends of external pools."""

from __future__ import annotations

from fastapi import APIRouter

from control_plane.deployments import service as deployments_service
from control_plane.deps import EndpointWriter, PublisherDep, Reader, SessionDep
from control_plane.errors import ERROR_RESPONSES, error_responses
from control_plane.registry import service as registry_service
from control_plane.registry.router import ModelPath, VersionPath
from control_plane.registry.schemas import DeploymentRead, EndpointsPut

router = APIRouter(prefix="/api/v1", responses=ERROR_RESPONSES)
CONFLICT = error_responses(409)


@router.put("/models/{model}/versions/{version}/endpoints", response_model=DeploymentRead, tags=["deployments"],
            responses=CONFLICT)
async def put_external_endpoints(model: ModelPath, version: VersionPath, body: EndpointsPut, session: SessionDep,
                                 actor: EndpointWriter, publisher: PublisherDep) -> DeploymentRead:
    deployment = await deployments_service.put_external_endpoints(session, model_name=model, version=version,
                                                               body=body, actor=actor, publisher=publisher)
    pool = await registry_service.get_pool_or_raise(session, name=body.pool)
    return DeploymentRead(version=version, pool=pool.name, gpu_arch=pool.gpu_arch,
                          desired_replicas=deployment.desired_replicas, ready_replicas=deployment.ready_replicas,
                          endpoints=[e["url"] for e in deployment.endpoints], phase=deployment.phase,
                          message=deployment.message, draining_since=deployment.draining_since,
                          updated_at=deployment.updated_at)


@router.get("/models/{model}/deployments", response_model=list[DeploymentRead], tags=["deployments"])
async def list_deployments(model: ModelPath, session: SessionDep, _actor: Reader) -> list[DeploymentRead]:
    found = await registry_service.get_model_or_raise(session, name=model)
    return [
        DeploymentRead(version=v.version, pool=p.name, gpu_arch=p.gpu_arch, desired_replicas=d.desired_replicas,
                       ready_replicas=d.ready_replicas, endpoints=[e["url"] for e in d.endpoints], phase=d.phase,
                       message=d.message, draining_since=d.draining_since, updated_at=d.updated_at)
        for d, v, p in await deployments_service.list_deployments(session, model=found)
    ]
