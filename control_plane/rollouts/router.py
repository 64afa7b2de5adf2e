"""Rollout endpoints (DESIGN "Rollouts"): start, list, get, pause, resume, abort, promote."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request

from control_plane.auth.service import Actor
from control_plane.changes import Committer
from control_plane.deps import PublisherDep, Reader, SessionDep, TrafficWriter
from control_plane.errors import ERROR_RESPONSES, error_responses
from control_plane.registry import service as registry_service
from control_plane.registry.router import ModelPath
from control_plane.rollouts import service as rollouts_service
from control_plane.rollouts.models import Rollout
from control_plane.rollouts.schemas import RolloutAction, RolloutCreate, RolloutRead
from control_plane.rollouts.webhook import Webhook

from sqlalchemy.ext.asyncio import AsyncSession

router = APIRouter(prefix="/api/v1", tags=["rollouts"], responses=ERROR_RESPONSES)
RolloutPath = Annotated[int, Path(ge=1, le=2**31 - 1)]


def get_webhook(request: Request) -> Webhook:
    return request.app.state.rollout_webhook  # type: ignore[no-any-return]


WebhookDep = Annotated[Webhook, Depends(get_webhook)]


async def _read(session: AsyncSession, model: str, rollout: Rollout, *, history: bool = False) -> RolloutRead:
    verdicts = await rollouts_service.verdicts(session, rollout=rollout) if history else None
    latest = (verdicts[-1] if verdicts else None) if history else \
        (await rollouts_service.latest_verdicts(session, rollout_ids=[rollout.id])).get(rollout.id)
    return RolloutRead.of(model, rollout, latest=latest, verdicts=verdicts)


@router.post("/models/{model}/rollouts", status_code=201, response_model=RolloutRead,
             responses=error_responses(409))
async def start_rollout(model: ModelPath, body: RolloutCreate, session: SessionDep, actor: TrafficWriter,
                        publisher: PublisherDep, webhook: WebhookDep) -> RolloutRead:
    """Start moving ``candidate`` from 0 to 100% in ``steps``, judged against ``baseline`` at each step.

    The gates are checked first (422 with their evidence unless ``override_gates``);
    one running or paused rollout per model (409).
    """
    rollout = await rollouts_service.start(session, model_name=model, body=body, actor=actor, publisher=publisher,
                                           webhook=webhook)
    return await _read(session, model, rollout)


@router.get("/models/{model}/rollouts", response_model=list[RolloutRead])
async def list_rollouts(model: ModelPath, session: SessionDep, _actor: Reader,
                        limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[RolloutRead]:
    """Newest first, without the verdict history (GET one rollout for it)."""
    found, rows = await rollouts_service.list_rollouts(session, model_name=model, limit=limit)
    latest = await rollouts_service.latest_verdicts(session, rollout_ids=[r.id for r in rows])
    return [RolloutRead.of(found.name, r, latest=latest.get(r.id)) for r in rows]


@router.get("/models/{model}/rollouts/{rollout_id}", response_model=RolloutRead)
async def get_rollout(model: ModelPath, rollout_id: RolloutPath, session: SessionDep, _actor: Reader) -> RolloutRead:
    found = await registry_service.get_model_or_raise(session, name=model)
    rollout = await rollouts_service.get_or_raise(session, model=found, rollout_id=rollout_id)
    return await _read(session, found.name, rollout, history=True)


async def _act(verb: str, model: str, rollout_id: int, body: RolloutAction, session: AsyncSession, actor: Actor,
               publisher: Committer, webhook: Webhook) -> RolloutRead:
    rollout = await rollouts_service.act(session, verb, model_name=model, rollout_id=rollout_id, reason=body.reason,
                                         actor=actor, publisher=publisher, webhook=webhook)
    return await _read(session, model, rollout, history=True)


@router.post("/models/{model}/rollouts/{rollout_id}/pause", response_model=RolloutRead,
             responses=error_responses(409))
async def pause_rollout(model: ModelPath, rollout_id: RolloutPath, body: RolloutAction, session: SessionDep,
                        actor: TrafficWriter, publisher: PublisherDep, webhook: WebhookDep) -> RolloutRead:
    """Stop judging and advancing; traffic stays, and may be changed by hand while paused."""
    return await _act("pause", model, rollout_id, body, session, actor, publisher, webhook)


@router.post("/models/{model}/rollouts/{rollout_id}/resume", response_model=RolloutRead,
             responses=error_responses(409))
async def resume_rollout(model: ModelPath, rollout_id: RolloutPath, body: RolloutAction, session: SessionDep,
                         actor: TrafficWriter, publisher: PublisherDep, webhook: WebhookDep) -> RolloutRead:
    """Run again: the current step's weight is re-applied and its pause starts over."""
    return await _act("resume", model, rollout_id, body, session, actor, publisher, webhook)


@router.post("/models/{model}/rollouts/{rollout_id}/abort", response_model=RolloutRead,
             responses=error_responses(409))
async def abort_rollout(model: ModelPath, rollout_id: RolloutPath, body: RolloutAction, session: SessionDep,
                        actor: TrafficWriter, publisher: PublisherDep, webhook: WebhookDep) -> RolloutRead:
    """End the rollout and restore the traffic policy that was live when it started."""
    return await _act("abort", model, rollout_id, body, session, actor, publisher, webhook)


@router.post("/models/{model}/rollouts/{rollout_id}/promote", response_model=RolloutRead,
             responses=error_responses(409))
async def promote_rollout(model: ModelPath, rollout_id: RolloutPath, body: RolloutAction, session: SessionDep,
                          actor: TrafficWriter, publisher: PublisherDep, webhook: WebhookDep) -> RolloutRead:
    """Skip to 100%: the candidate takes all traffic and becomes the default version."""
    return await _act("promote", model, rollout_id, body, session, actor, publisher, webhook)


def install(app: FastAPI) -> None:
    """Called by ``create_app``."""
    app.state.rollout_webhook = Webhook(app.state.settings.webhook_url)
    app.include_router(router)
