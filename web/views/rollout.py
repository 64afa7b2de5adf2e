"""Rollouts from the UI: start one (presets or custom steps), watch it, pause / resume / abort / promote it.

The page offers what the signed-in role may do; each POST still calls
``auth_service.authorize`` and goes through ``rollouts_service``, which
refuses what the rollout's state forbids (409) and what the gates refuse (422
with their evidence); both come back as pages that say why.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request, Response
from pydantic import ValidationError

from control_plane.auth import service as auth_service
from control_plane.auth.service import Permission
from control_plane.deps import PublisherDep, SessionDep
from control_plane.errors import Conflict, InvalidInput, NotFound, validation_details
from control_plane.registry import service as registry_service
from control_plane.rollouts import service as rollouts_service
from control_plane.rollouts.schemas import RolloutCreate
from control_plane.rollouts.webhook import Webhook
from web import forms
from web import rollout as rollout_panel
from web.views.model import _Edit, _model_page
from web.views.pages import VisitorDep, _PageRoute, _posted, _reader, _redirect, _render, templates

router = APIRouter(prefix="/ui", route_class=_PageRoute, include_in_schema=False)
templates.env.globals.update(verdict_tone=rollout_panel.VERDICT_TONE, verdict_text=rollout_panel.VERDICT_TEXT)
ROLLOUT_PERMISSION = Permission.TRAFFIC_WRITE  # the API's rule: release managers and admins


@router.get("/models/{name}/rollout-panel")
async def rollout_panel_fragment(name: str, request: Request, visitor: VisitorDep, db: SessionDep) -> Response:
    """The rollout panel alone, for the page to refresh in place while a rollout runs."""
    actor = _reader(visitor)
    model = await registry_service.get_model_or_raise(db, name=name)
    context = await rollout_panel.load(db, model=model, refusal=None, now=_now())
    # Not _render: it would take the session's flashes, which belong to the next full page.
    return templates.TemplateResponse(request, "_rollout.html", {
        "model": model, "rollout": context, "can_rollout": actor.can(ROLLOUT_PERMISSION), "actor": actor,
        "csrf": visitor.ui.csrf, "default": context["default"]})


@router.post("/models/{name}/rollouts")
async def start_rollout(name: str, request: Request, visitor: VisitorDep, db: SessionDep,
                        publisher: PublisherDep) -> Response:
    form = await _posted(request, visitor)
    actor = _reader(visitor)
    auth_service.authorize(actor, ROLLOUT_PERMISSION)
    start = rollout_panel.read_start(form)

    async def refused(refusal: rollout_panel.Refusal, status: int) -> Response:
        return await _model_page(request, visitor, db, name, status=status,
                                 edit=_Edit("rollout", refusal.errors, rollout=refusal))

    body, errors = rollout_panel.start_body(start)
    if errors:
        return await refused(rollout_panel.Refusal(start, errors), 422)
    try:
        create = RolloutCreate.model_validate(body)
    except ValidationError as exc:
        details = validation_details(exc.errors())  # type: ignore[arg-type]
        return await refused(rollout_panel.Refusal(start, rollout_panel.errors_from_details(details, start)), 422)
    try:
        started = await rollouts_service.start(db, model_name=name, body=create, actor=actor, publisher=publisher,
                                               webhook=_webhook(request))
    except InvalidInput as exc:
        await db.rollback()
        gates = rollout_panel.gate_evidence(exc.details)
        if gates:
            return await refused(rollout_panel.Refusal(start, {}, gates), 422)
        details = exc.details if isinstance(exc.details, list) else []
        errors = rollout_panel.errors_from_details(details, start) if details else {"": [exc.message]}
        return await refused(rollout_panel.Refusal(start, errors), 422)
    except Conflict as exc:
        await db.rollback()
        return await refused(rollout_panel.Refusal(start, {"": [exc.message]}), 409)
    visitor.ui.flash("ok", f"Rollout {started.id} started: {started.candidate} against {started.baseline}, "
                           f"first step {rollout_panel.fmt_number(started.steps[0]['weight'])}%.")
    return _redirect(f"/ui/models/{quote(name)}#rollout")


def _now() -> datetime:
    return datetime.now(UTC)


def _webhook(request: Request) -> Webhook | None:
    """The API's rollout webhook: the UI's actions announce what the API's would."""
    return getattr(request.app.state, "rollout_webhook", None)


async def _confirm_page(request: Request, visitor: Any, db: Any, *, name: str, rollout_id: int, action: str,
                        reason: str = "", error: str | None = None, status: int = 200) -> Response:
    model = await registry_service.get_model_or_raise(db, name=name)
    rollout = await rollout_panel.read(db, model=model, rollout_id=rollout_id)
    what = {
        "pause": "The controller stops judging and advancing; the traffic stays where it is and may be changed "
                 "by hand until the rollout resumes.",
        "resume": "The current step starts over: its weight is applied again and its pause counts from now.",
        "abort": f"Traffic goes back to the policy that was live when the rollout started; {rollout['candidate']} "
                 "gets no traffic from the split.",
        "promote": f"The remaining steps are skipped: {rollout['candidate']} gets 100% now and becomes the default.",
    }[action]
    return _render(request, visitor, "rollout_confirm.html", {
        "model": model, "r": rollout, "action": action, "label": rollout_panel.ACTIONS[action], "what": what,
        "steps": rollout_panel.timeline(rollout, now=_now()), "reason": reason, "error": error,
        "reason_required": action in rollout_panel.REASON_REQUIRED,
        "state_tone": rollout_panel.STATE_TONE, "state_text": rollout_panel.STATE_TEXT,
    }, status)


@router.get("/models/{name}/rollouts/{rollout_id}/confirm/{action}")
async def confirm_rollout_action(name: str, rollout_id: str, action: str, request: Request, visitor: VisitorDep,
                                 db: SessionDep) -> Response:
    actor = _reader(visitor)
    auth_service.authorize(actor, ROLLOUT_PERMISSION)
    number = forms.integer(rollout_id)
    if action not in rollout_panel.ACTIONS or number is None:
        raise NotFound(f"no rollout action {action!r} for rollout {rollout_id!r}")
    return await _confirm_page(request, visitor, db, name=name, rollout_id=number, action=action)


@router.post("/models/{name}/rollouts/{rollout_id}/{action}")
async def rollout_action(name: str, rollout_id: str, action: str, request: Request, visitor: VisitorDep,
                         db: SessionDep, publisher: PublisherDep) -> Response:
    form = await _posted(request, visitor)
    actor = _reader(visitor)
    auth_service.authorize(actor, ROLLOUT_PERMISSION)
    number = forms.integer(rollout_id)
    if action not in rollout_panel.ACTIONS or number is None:
        raise NotFound(f"no rollout action {action!r} for rollout {rollout_id!r}")
    reason = str(form.get("reason") or "").strip()

    async def refused(message: str, status: int) -> Response:
        return await _confirm_page(request, visitor, db, name=name, rollout_id=number, action=action, reason=reason,
                                   error=message, status=status)

    if len(reason) > 2000:
        return await refused("reason: at most 2000 characters", 422)
    if action in rollout_panel.REASON_REQUIRED and not reason:
        return await refused(f"say why you {action} the rollout; it is kept in the history", 422)
    try:
        done = await rollouts_service.act(db, action, model_name=name, rollout_id=number, reason=reason,
                                          actor=actor, publisher=publisher, webhook=_webhook(request))
    except (Conflict, InvalidInput) as exc:
        await db.rollback()
        return await refused(exc.message, exc.status_code)
    text = {"pause": "paused", "resume": "resumed", "abort": "aborted: the traffic policy from before it is live again",
            "promote": f"promoted: {done.candidate} has 100% and is the default"}[action]
    visitor.ui.flash("ok", f"Rollout {number} {text}.")
    return _redirect(f"/ui/models/{quote(name)}#rollout")


@router.get("/models/{name}/rollouts/{rollout_id}")
async def rollout_page(name: str, rollout_id: str, request: Request, visitor: VisitorDep, db: SessionDep) -> Response:
    """One rollout in full: its steps and every verdict with its evidence."""
    _reader(visitor)
    number = forms.integer(rollout_id)
    if number is None:
        raise NotFound(f"no rollout {rollout_id!r}")
    model = await registry_service.get_model_or_raise(db, name=name)
    rollout = await rollout_panel.read(db, model=model, rollout_id=number)
    verdicts = [(v, rollout_panel.arch_rows(v)) for v in reversed(rollout.get("verdicts") or [])]
    return _render(request, visitor, "rollout.html", {
        "model": model, "r": rollout, "steps": rollout_panel.timeline(rollout, now=_now()), "verdicts": verdicts,
        "state_tone": rollout_panel.STATE_TONE, "state_text": rollout_panel.STATE_TEXT,
    })
