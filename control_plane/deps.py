"""Dependencies injected into routes, each defined once as an ``Annotated`` alias.

It sits beside ``auth`` at the bottom of the layers (every domain's routes use
it), so it names the publisher by its ``changes.Committer`` protocol; the one
route that needs the snapshot publisher itself (``GET /snapshot``) asks for
``traffic.publisher.SnapshotPublisherDep``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.auth import service as auth_service
from control_plane.auth.service import Actor, Permission
from control_plane.changes import Committer
from control_plane.errors import Unauthenticated
from control_plane.settings import Settings


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessions() as session:
        yield session


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_publisher(request: Request) -> Committer:
    return request.app.state.publisher  # type: ignore[no-any-return]


SessionDep = Annotated[AsyncSession, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
PublisherDep = Annotated[Committer, Depends(get_publisher)]

# Where ``admission`` leaves the actor it authenticated before the body was read (request.state).
ADMITTED_ACTOR = "grayroute_admitted_actor"

_bearer = HTTPBearer(auto_error=False, description="An API token: `Authorization: Bearer gr_…`")


async def current_actor(
    request: Request, session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Actor:
    admitted = getattr(request.state, ADMITTED_ACTOR, None)
    if isinstance(admitted, Actor):  # authenticated before the body was read
        return admitted
    if credentials is None or not credentials.credentials:
        raise Unauthenticated("missing bearer token (Authorization: Bearer <token>)",
                              headers={"WWW-Authenticate": "Bearer"})
    return await auth_service.authenticate(session, token=credentials.credentials)


CurrentActor = Annotated[Actor, Depends(current_actor)]


def _permitted(permission: Permission):  # type: ignore[no-untyped-def]
    async def dependency(actor: CurrentActor) -> Actor:
        auth_service.authorize(actor, permission)
        return actor

    return Depends(dependency)


Reader = Annotated[Actor, _permitted(Permission.READ)]
SnapshotReader = Annotated[Actor, _permitted(Permission.SNAPSHOT)]
ModelWriter = Annotated[Actor, _permitted(Permission.MODELS_WRITE)]
VersionWriter = Annotated[Actor, _permitted(Permission.VERSIONS_WRITE)]
VersionOperator = Annotated[Actor, _permitted(Permission.VERSIONS_OPERATE)]
EndpointWriter = Annotated[Actor, _permitted(Permission.ENDPOINTS_WRITE)]
PoolWriter = Annotated[Actor, _permitted(Permission.POOLS_WRITE)]
TrafficWriter = Annotated[Actor, _permitted(Permission.TRAFFIC_WRITE)]
TokenWriter = Annotated[Actor, _permitted(Permission.TOKENS_WRITE)]
StatsReporter = Annotated[Actor, _permitted(Permission.STATS_REPORT)]
