"""Traffic endpoints: the live policy (ETag / If-Match), its history, route explanations, the snapshot."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response

from control_plane.deps import PublisherDep, Reader, SessionDep, SnapshotReader, TrafficWriter
from control_plane.errors import ERROR_RESPONSES, InvalidInput, error_responses
from control_plane.registry import service as registry_service
from control_plane.registry.router import ModelPath
from control_plane.traffic import service as traffic_service
from control_plane.traffic.publisher import SnapshotPublisherDep
from control_plane.traffic.models import TrafficRevision
from control_plane.traffic.schemas import ActionIn, RouteExplanation, TrafficPut, TrafficRead, TrafficWritten

router = APIRouter(prefix="/api/v1", tags=["traffic"], responses=ERROR_RESPONSES)


def _read(model: str, revision: TrafficRevision | None) -> TrafficRead:
    return TrafficRead.of(model, revision)


@router.get("/models/{model}/traffic", response_model=TrafficRead)
async def get_traffic(model: ModelPath, session: SessionDep, _actor: Reader, response: Response) -> TrafficRead:
    found = await registry_service.get_model_or_raise(session, name=model)
    current = await traffic_service.get_current(session, model=found)
    response.headers["ETag"] = traffic_service.etag(current.revision if current else 0)
    return _read(found.name, current)


@router.put("/models/{model}/traffic", response_model=TrafficWritten, responses=error_responses(412, 428))
async def put_traffic(model: ModelPath, body: TrafficPut, session: SessionDep, actor: TrafficWriter,
                      publisher: PublisherDep, response: Response,
                      if_match: Annotated[str | None, Header()] = None) -> TrafficWritten:
    """Write a new revision of the policy.

    A policy identical to the live one (default version, splits in order, rules;
    the reason aside) writes nothing: 200 with the live revision and
    ``"created": false``, so retries and re-submits leave no noise in the history.
    """
    revision = await traffic_service.put(session, model_name=model, body=body, if_match=if_match, actor=actor,
                                         publisher=publisher)
    response.headers["ETag"] = traffic_service.etag(revision.revision)
    created = revision.revision != traffic_service.parse_etag(if_match or "")
    message = (f"revision {revision.revision} is live" if created else
               f"identical to the live revision {revision.revision}: nothing was written")
    found = await registry_service.get_model_or_raise(session, name=model)
    note = traffic_service.default_note(revision, anonymous=found.anonymous)
    return TrafficWritten(**_read(model, revision).model_dump(), created=created, message=message,
                          notes=[note] if note else [])


@router.post("/models/{model}/traffic/{action}", response_model=TrafficRead, responses=error_responses(412, 428))
async def traffic_action(model: ModelPath, action: traffic_service.Action, body: ActionIn, session: SessionDep,
                         actor: TrafficWriter, publisher: PublisherDep, response: Response,
                         if_match: Annotated[str | None, Header()] = None) -> TrafficRead:
    """Promote (the version takes 100% and becomes the default), roll back (its weight returns to the
    default version) or re-apply an earlier revision, as a new revision; If-Match as for PUT."""
    needed = "revision" if action is traffic_service.Action.REAPPLY else "version"
    if getattr(body, needed) is None:
        raise InvalidInput.field(needed, f"required to {action.value}")
    revision = await traffic_service.run_action(session, model_name=model, action=action, version=body.version or "",
                                                source=body.revision, reason=body.reason, if_match=if_match,
                                                actor=actor, publisher=publisher)
    response.headers["ETag"] = traffic_service.etag(revision.revision)
    return _read(model, revision)


@router.get("/models/{model}/traffic/revisions", response_model=list[TrafficRead])
async def list_traffic_revisions(model: ModelPath, session: SessionDep, _actor: Reader,
                                 limit: Annotated[int, Query(ge=1, le=500)] = 50,
                                 before: Annotated[int | None, Query(ge=1)] = None) -> list[TrafficRead]:
    found = await registry_service.get_model_or_raise(session, name=model)
    return [_read(found.name, r) for r in await traffic_service.list_revisions(session, model=found, limit=limit,
                                                                              before=before)]


@router.get("/models/{model}/traffic/revisions/{revision}", response_model=TrafficRead)
async def get_traffic_revision(model: ModelPath, revision: int, session: SessionDep, _actor: Reader) -> TrafficRead:
    found = await registry_service.get_model_or_raise(session, name=model)
    return _read(found.name, await traffic_service.get_revision_or_raise(session, model=found, revision=revision))


@router.get("/models/{model}/route", response_model=RouteExplanation)
async def explain_route(
    model: ModelPath, session: SessionDep, _actor: Reader,
    key: Annotated[str | None, Query(max_length=4096, description="the routing key (e.g. a user ID)")] = None,
    header: Annotated[list[str], Query(description="extra request headers as name:value, for rules")] = [],  # noqa: B006
) -> RouteExplanation:
    headers: dict[str, str] = {}
    for i, item in enumerate(header):
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise InvalidInput.field(f"header[{i}]", "must be name:value")
        headers[name.strip().lower()] = value.strip()
    return RouteExplanation(**await traffic_service.explain(session, model_name=model, key=key, headers=headers))


@router.get("/snapshot", responses={304: {"description": "unchanged since If-None-Match"}})
async def get_snapshot(
    request: Request, session: SessionDep, _actor: SnapshotReader, publisher: SnapshotPublisherDep,
    if_none_match: Annotated[str | None, Header()] = None,
    wait: Annotated[float, Query(ge=0, le=60, description="long-poll: wait up to this many seconds for a newer "
                                                          "revision than If-None-Match")] = 0,
) -> Response:
    known = traffic_service.parse_etag(if_none_match) if if_none_match else None
    revision, payload = await publisher.encoded(session)
    if known is not None and known >= revision and wait > 0:
        await session.close()  # don't hold a connection while waiting
        await publisher.notifier.wait_for_revision_after(known, wait)
        revision, payload = await publisher.encoded()
    if known is not None and known >= revision:
        return Response(status_code=304, headers={"ETag": traffic_service.etag(revision)})
    return Response(payload, media_type="application/json", headers={"ETag": traffic_service.etag(revision)})
