"""The model page: versions and their readiness, the live split, rules, history, live figures."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request, Response

from control_plane.audit import service as audit_service
from control_plane.auth import service as auth_service
from control_plane.auth.service import Permission
from control_plane.deployments import service as deployments_service
from control_plane.deps import PublisherDep, SessionDep
from control_plane.errors import (
    Conflict,
    InvalidInput,
)
from control_plane.parity import service as parity_service
from control_plane.parity.schemas import ModelParity
from control_plane.registry import service as registry_service
from control_plane.registry.models import Model, VersionStatus
from control_plane.registry.router import LivePoliciesDep
from control_plane.registry.schemas import VersionUpdate
from control_plane.traffic import service as traffic_service
from control_plane.traffic.models import TrafficRevision
from web import coverage as version_coverage
from web import figures as live_figures
from web import forms
from web import history
from web import parity_charts
from web.forms import Errors, RuleRow, ShadowRow
from web.views.pages import (
    HISTORY_PAGE,
    PALETTE,
    PHASE_TONE,
    Visitor,
    VisitorDep,
    _colors,
    _PageRoute,
    _posted,
    _reader,
    _redirect,
    _render,
    fmt_weight,
    templates,
)

router = APIRouter(prefix="/ui", route_class=_PageRoute, include_in_schema=False)
log = logging.getLogger("grayroute.web")
PARITY_WINDOW = 300  # seconds of shadow comparisons the parity panel merges


async def _parity(app_state: Any, model: str) -> ModelParity | None:
    """Merged parity windows, or None when the store cannot answer (the page renders without them)."""
    store = getattr(app_state, "parity_store", None)
    if store is None:
        return None
    try:
        return await parity_service.get(store, model=model, window=PARITY_WINDOW, now=time.time())
    except Exception:  # noqa: BLE001 - e.g. Redis is down
        log.exception("parity of %s unavailable", model)
        return None


def _weights(current: TrafficRevision | None) -> dict[str, str]:
    return {v: fmt_weight(w) for v, w in current.policy.weights().items()} if current else {}


def _offered(current: TrafficRevision | None, versions: Sequence[Any]) -> list[str]:
    """Rows of the traffic form: the split's versions in order, then the others that could take traffic."""
    labels = list(current.policy.weights()) if current else []
    labels += [v.version for v in versions if v.version not in labels and v.status != VersionStatus.RETIRED]
    return labels


def _target_label(event: Any, model: str) -> str:
    """Targets relative to the page's model: "resnet50/4@a100" -> "4@a100", "resnet50" -> "traffic"."""
    if event.target == model:
        return str(event.target_type)
    return str(event.target).removeprefix(model + "/")


@dataclass
class _Edit:
    """What the person submitted, re-shown with its errors when it was refused."""

    form: str  # "traffic" | "rules"
    errors: Errors
    weights: dict[str, str] | None = None
    default_version: str | None = None
    reason: str = ""
    rules: list[RuleRow] | None = None
    shadow: ShadowRow | None = None


async def _model_page(request: Request, visitor: Visitor, db: Any, name: str, *, status: int = 200,
                      edit: _Edit | None = None, conflict: dict[str, Any] | None = None,
                      revisions_before: int | None = None, events_before: int | None = None) -> Response:
    actor = _reader(visitor)
    model = await registry_service.get_model_or_raise(db, name=name)
    versions = await registry_service.list_versions(db, model=model)
    current = await traffic_service.get_current(db, model=model)
    deployments = await deployments_service.list_deployments(db, model=model)
    colors = _colors([v.version for v in versions])
    weights = _weights(current)
    default = current.policy.default_version if current else None
    by_key = {(v.version, p.name): d for d, v, p in deployments}

    version_rows = []
    for version in versions:
        pools = await registry_service.runnable_pools(db, version=version)
        readiness = []
        for pool in pools:
            deployment = by_key.get((version.version, pool.name))
            readiness.append({"pool": pool, "deployment": deployment,
                              "tone": PHASE_TONE.get(deployment.phase, "warn") if deployment else "muted"})
        # deployments on pools that no longer match (e.g. draining) are shown too
        known = {p.name for p in pools}
        readiness += [{"pool": p, "deployment": d, "tone": PHASE_TONE.get(d.phase, "warn")}
                      for d, v, p in deployments if v.version == version.version and p.name not in known]
        version_rows.append({"v": version, "weight": weights.get(version.version), "color": colors[version.version],
                             "is_default": version.version == default, "readiness": readiness,
                             "runnable": bool(pools)})

    offered = _offered(current, versions)
    shown_weights = edit.weights if edit and edit.weights is not None else weights
    traffic_rows = [{"version": v, "value": shown_weights.get(v, "0"), "color": colors.get(v, PALETTE[-1]),
                     "in_split": v in weights} for v in offered]
    rule_rows = edit.rules if edit and edit.rules is not None else [
        RuleRow.of(i, r.to_json()) for i, r in enumerate(current.policy.rules if current else ())]
    rule_rows = [*rule_rows, RuleRow(len(rule_rows))]  # one empty row to add a rule
    candidates = [v for v in (current.policy.weighted_versions() if current else []) if v != default]
    figures = await live_figures.load(request.app.state, model=model.name, default_version=default,
                                      versions=[v.version for v in versions], colors=colors,
                                      weights=current.policy.weights() if current else {})
    context = {
        "model": model, "current": current, "default": default, "colors": colors,
        "versions": version_rows, "traffic_rows": traffic_rows, "rule_rows": rule_rows,
        "candidates": candidates,
        "selectable": [v.version for v in versions if v.status != VersionStatus.RETIRED],
        "revisions": await traffic_service.list_revisions(db, model=model, limit=HISTORY_PAGE,
                                                          before=revisions_before),
        "revisions_paged": revisions_before is not None, "events_paged": events_before is not None,
        "page_size": HISTORY_PAGE,
        "events": await _events(db, model, events_before),
        "coverage": await version_coverage.load(db, model=model, versions=versions),
        "default_note": traffic_service.default_note(current, anonymous=model.anonymous) if current else None,
        "figures": figures,
        "parity": await _parity(request.app.state, model.name),
        "parity_charts": await parity_charts.load(request.app.state, model=model.name, colors=colors),
        "shadow": current.policy.shadow if current else None,
        "shadow_row": edit.shadow if edit and edit.shadow is not None else ShadowRow.of(
            current.policy.shadow if current else None),
        "edit": edit, "errors": edit.errors if edit else {},
        "edit_default": edit.default_version if edit and edit.default_version else default,
        "conflict": conflict,
        "can_traffic": actor.can(Permission.TRAFFIC_WRITE),
        "can_operate": actor.can(Permission.VERSIONS_OPERATE),
    }
    return _render(request, visitor, "model.html", context, status)


async def _events(db: SessionDep, model: Model, events_before: int | None) -> list[tuple[Any, str, Any]]:
    """Audit events with their changes; traffic events get their revisions' rules back for the diff."""
    events = await audit_service.list(db, model=model.name, limit=HISTORY_PAGE, before_id=events_before)
    numbers = history.revision_numbers([s for e in events for s in (e.before, e.after)])
    revisions = await traffic_service.revisions_by_number(db, model=model, numbers=numbers)
    rules_of = {n: r.policy.rules for n, r in revisions.items()}
    return [(e, _target_label(e, model.name),
             history.changes(e.before, e.after, rules_of if e.target_type == "traffic" else None))
            for e in events]


@router.get("/models/{name}")
async def model_page(name: str, request: Request, visitor: VisitorDep, db: SessionDep, revisions_before: str = "",
                     events_before: str = "") -> Response:
    """The model page; ``revisions_before`` / ``events_before`` page back through the history."""
    return await _model_page(request, visitor, db, name,
                             revisions_before=forms.integer(revisions_before), events_before=forms.integer(events_before))


@router.get("/models/{name}/figures")
async def figures_panel(name: str, request: Request, visitor: VisitorDep, db: SessionDep,
                        window: str = "") -> Response:
    """The live-figures panel alone (over ``window`` seconds), for the page to refresh in place."""
    _reader(visitor)
    model = await registry_service.get_model_or_raise(db, name=name)
    versions = [v.version for v in await registry_service.list_versions(db, model=model)]
    current = await traffic_service.get_current(db, model=model)
    colors = _colors(versions)
    figures = await live_figures.load(request.app.state, model=model.name,
                                      default_version=current.policy.default_version if current else None,
                                      versions=versions, colors=colors, window=live_figures.window_of(window),
                                      weights=current.policy.weights() if current else {})
    return templates.TemplateResponse(request, "_figures.html", {"model": model, "figures": figures,
                                                                 "colors": colors})


@router.post("/models/{name}/versions/{version}/warm")
async def set_warm(name: str, version: str, request: Request, visitor: VisitorDep, db: SessionDep,
                   publisher: PublisherDep) -> Response:
    form = await _posted(request, visitor)
    actor = _reader(visitor)
    auth_service.authorize(actor, Permission.VERSIONS_OPERATE)
    warm = form.get("warm") == "1"
    try:
        await registry_service.update_version(db, model_name=name, version=version, body=VersionUpdate(warm=warm),
                                              actor=actor, publisher=publisher)
    except (Conflict, InvalidInput) as exc:
        await db.rollback()
        visitor.ui.flash("error", exc.message)
    else:
        visitor.ui.flash(*await version_coverage.warm_message(db, model_name=name, version=version, warm=warm))
    return _redirect(f"/ui/models/{quote(name)}#versions")


@router.post("/models/{name}/versions/{version}/retire")
async def retire_version(name: str, version: str, request: Request, visitor: VisitorDep, db: SessionDep,
                         publisher: PublisherDep, policies: LivePoliciesDep) -> Response:
    await _posted(request, visitor)
    actor = _reader(visitor)
    auth_service.authorize(actor, Permission.VERSIONS_OPERATE)
    try:
        await registry_service.retire_version(db, model_name=name, version=version, actor=actor,
                                              publisher=publisher, policies=policies)
    except Conflict as exc:
        await db.rollback()
        visitor.ui.flash("error", f"Not retired: {exc.message}.")
    else:
        visitor.ui.flash("ok", f"Version {version} is retired: it gets no traffic and its deployments are removed.")
    return _redirect(f"/ui/models/{quote(name)}#versions")
