"""Registry endpoints: models, versions, engines, pools, deployments, external endpoints."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response

from control_plane.auth import service as auth_service
from control_plane.auth.service import Permission
from control_plane.deps import (
    CurrentActor,
    ModelWriter,
    PoolWriter,
    PublisherDep,
    Reader,
    SessionDep,
    SettingsDep,
    VersionOperator,
    VersionWriter,
)
from control_plane.errors import ERROR_RESPONSES, error_responses
from control_plane.registry import service as registry_service
from control_plane.registry.models import Model, Version
from control_plane.registry.schemas import (
    MODEL_NAME,
    VERSION_LABEL,
    EngineCreate,
    EngineRead,
    ModelCreate,
    ModelRead,
    ModelUpdate,
    PoolPut,
    PoolRead,
    VersionCreate,
    VersionRead,
    VersionUpdate,
)

router = APIRouter(prefix="/api/v1", responses=ERROR_RESPONSES)
CONFLICT = error_responses(409)

ModelPath = Annotated[str, Path(pattern=MODEL_NAME, max_length=63)]
VersionPath = Annotated[str, Path(pattern=VERSION_LABEL, max_length=63)]
PoolPath = Annotated[str, Path(pattern=MODEL_NAME, max_length=63)]
ROUTING_FIELDS = frozenset({"salt", "key_header", "anonymous"})


def _live_policies(request: Request) -> registry_service.LivePolicies:
    return request.app.state.live_policies  # type: ignore[no-any-return]


# The traffic package's answers, handed in by the app (traffic sits above the registry).
LivePoliciesDep = Annotated[registry_service.LivePolicies, Depends(_live_policies)]


def _registered_endpoints(request: Request) -> registry_service.RegisteredEndpoints:
    return request.app.state.registered_endpoints  # type: ignore[no-any-return]


# The deployments package's answer, handed in the same way (deployments sit above the registry).
RegisteredEndpointsDep = Annotated[registry_service.RegisteredEndpoints, Depends(_registered_endpoints)]


def _model_read(model: Model, versions: Sequence[Version], current: registry_service.LivePolicy | None) -> ModelRead:
    return ModelRead(
        name=model.name, description=model.description, key_header=model.key_header, salt=model.salt,
        anonymous=model.anonymous, replicas=model.replicas, created_by=model.created_by,
        created_at=model.created_at, updated_at=model.updated_at, versions=[v.version for v in versions],
        default_version=current.policy.default_version if current else None,
        traffic_revision=current.revision if current else 0,
    )


async def _one_model_read(session: SessionDep, policies: registry_service.LivePolicies, model: Model) -> ModelRead:
    live = await policies.live(session, model_ids=[model.id])
    return _model_read(model, await registry_service.list_versions(session, model=model), live.get(model.id))


@router.post("/models", status_code=201, response_model=ModelRead, tags=["models"], responses=CONFLICT)
async def create_model(body: ModelCreate, session: SessionDep, actor: ModelWriter,
                       policies: LivePoliciesDep) -> ModelRead:
    model = await registry_service.create_model(session, body=body, actor=actor)
    return await _one_model_read(session, policies, model)


@router.get("/models", response_model=list[ModelRead], tags=["models"])
async def list_models(session: SessionDep, _actor: Reader, policies: LivePoliciesDep) -> list[ModelRead]:
    models = await registry_service.list_models(session)  # versions loaded with them
    current = await policies.live(session, model_ids=[m.id for m in models])
    return [_model_read(m, m.versions, current.get(m.id)) for m in models]


@router.get("/models/{model}", response_model=ModelRead, tags=["models"])
async def get_model(model: ModelPath, session: SessionDep, _actor: Reader, policies: LivePoliciesDep) -> ModelRead:
    return await _one_model_read(session, policies, await registry_service.get_model_or_raise(session, name=model))


@router.patch("/models/{model}", response_model=ModelRead, tags=["models"])
async def update_model(model: ModelPath, body: ModelUpdate, session: SessionDep, actor: CurrentActor,
                       publisher: PublisherDep, policies: LivePoliciesDep) -> ModelRead:
    # Salt, key header and anonymous policy decide which version each user gets: changing them moves
    # users like a traffic change does, so they are the release managers' (and admins') call.
    routing = sorted(f for f in ROUTING_FIELDS if getattr(body, f) is not None)
    if routing:
        auth_service.authorize(actor, Permission.TRAFFIC_WRITE, fields=routing)
    if any(getattr(body, f) is not None for f in body.model_fields_set - ROUTING_FIELDS - {"reason"}) or not routing:
        auth_service.authorize(actor, Permission.MODELS_WRITE)
    updated = await registry_service.update_model(session, name=model, body=body, actor=actor, publisher=publisher,
                                                  policies=policies)
    return await _one_model_read(session, policies, updated)


@router.post("/models/{model}/versions", status_code=201, response_model=VersionRead, tags=["versions"],
             responses=CONFLICT)
async def create_version(model: ModelPath, body: VersionCreate, session: SessionDep, actor: VersionWriter,
                         publisher: PublisherDep, settings: SettingsDep) -> VersionRead:
    version = await registry_service.create_version(session, model_name=model, body=body, actor=actor,
                                                    publisher=publisher,
                                                    allow_http_engines=settings.allow_http_engine_uris)
    return VersionRead.model_validate(version)


@router.get("/models/{model}/versions", response_model=list[VersionRead], tags=["versions"])
async def list_versions(model: ModelPath, session: SessionDep, _actor: Reader) -> list[VersionRead]:
    found = await registry_service.get_model_or_raise(session, name=model)
    return [VersionRead.model_validate(v) for v in await registry_service.list_versions(session, model=found)]


@router.get("/models/{model}/versions/{version}", response_model=VersionRead, tags=["versions"])
async def get_version(model: ModelPath, version: VersionPath, session: SessionDep, _actor: Reader) -> VersionRead:
    found = await registry_service.get_model_or_raise(session, name=model)
    return VersionRead.model_validate(await registry_service.get_version_or_raise(session, model=found,
                                                                                 version=version))


@router.patch("/models/{model}/versions/{version}", response_model=VersionRead, tags=["versions"],
              responses=CONFLICT)
async def update_version(model: ModelPath, version: VersionPath, body: VersionUpdate, session: SessionDep,
                         actor: VersionOperator, publisher: PublisherDep) -> VersionRead:
    updated = await registry_service.update_version(session, model_name=model, version=version, body=body,
                                                    actor=actor, publisher=publisher)
    return VersionRead.model_validate(updated)


@router.post("/models/{model}/versions/{version}/retire", response_model=VersionRead, tags=["versions"],
             responses=CONFLICT)
async def retire_version(model: ModelPath, version: VersionPath, session: SessionDep, actor: VersionOperator,
                         publisher: PublisherDep, policies: LivePoliciesDep) -> VersionRead:
    retired = await registry_service.retire_version(session, model_name=model, version=version, actor=actor,
                                                    publisher=publisher, policies=policies)
    return VersionRead.model_validate(retired)


@router.post("/models/{model}/versions/{version}/engines", status_code=201, response_model=EngineRead,
             tags=["versions"], responses=CONFLICT)
async def add_engine(model: ModelPath, version: VersionPath, body: EngineCreate, session: SessionDep,
                     actor: VersionWriter, publisher: PublisherDep, settings: SettingsDep) -> EngineRead:
    engine = await registry_service.add_engine(session, model_name=model, version=version, body=body, actor=actor,
                                               publisher=publisher, allow_http_engines=settings.allow_http_engine_uris)
    return EngineRead.model_validate(engine)


@router.put("/pools/{pool}", response_model=PoolRead, tags=["pools"],
            responses={201: {"model": PoolRead, "description": "created"}})
async def put_pool(pool: PoolPath, body: PoolPut, session: SessionDep, actor: PoolWriter, publisher: PublisherDep,
                   registered: RegisteredEndpointsDep, response: Response) -> PoolRead:
    saved, created = await registry_service.put_pool(session, name=pool, body=body, actor=actor, publisher=publisher,
                                                     registered=registered)
    response.status_code = 201 if created else 200
    return PoolRead.model_validate(saved)


@router.get("/pools", response_model=list[PoolRead], tags=["pools"])
async def list_pools(session: SessionDep, _actor: Reader) -> list[PoolRead]:
    return [PoolRead.model_validate(p) for p in await registry_service.list_pools(session)]


@router.get("/pools/{pool}", response_model=PoolRead, tags=["pools"])
async def get_pool(pool: PoolPath, session: SessionDep, _actor: Reader) -> PoolRead:
    return PoolRead.model_validate(await registry_service.get_pool_or_raise(session, name=pool))
