"""Traffic changes from the UI: preview, apply a split, save rules, promote / roll back / re-apply.

Every change goes through ``traffic_service`` with the page's revision as
If-Match, so a stale page is refused (409 page), never silently applied.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.datastructures import FormData

from control_plane.auth import service as auth_service
from control_plane.auth.service import Permission
from control_plane.deps import PublisherDep, SessionDep
from control_plane.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    PreconditionFailed,
)
from control_plane.registry import service as registry_service
from control_plane.registry.models import Model, VersionStatus
from control_plane.traffic import service as traffic_service
from control_plane.traffic.models import TrafficRevision
from control_plane.traffic.preview import preview
from control_plane.traffic.schemas import TrafficPut
from control_plane.traffic.service import Action
from router.routing import AllocationError, Range
from web import coverage as version_coverage
from web import forms
from web.forms import Errors, FormInvalid, ShadowRow, SplitRow
from web.views.model import _Edit, _model_page
from web.views.pages import (
    Visitor,
    VisitorDep,
    _colors,
    _PageRoute,
    _posted,
    _reader,
    _redirect,
    _render,
    _splits_text,
    fmt_weight,
    shadow_text,
)

router = APIRouter(prefix="/ui", route_class=_PageRoute, include_in_schema=False)


def _previous_layout(model: Model, current: TrafficRevision | None) -> list[Range] | None:
    # The same choice traffic_service.put makes: a changed salt starts a fresh layout.
    if current is None or current.salt != model.salt:
        return None
    return [(s, e, v) for s, e, v in current.allocation]


def _rules_text(put: TrafficPut) -> str:
    return "rules: " + ("; ".join(f"{r.name} → {r.version}" for r in put.policy().rules) or "none")


def _policy_text(put: TrafficPut) -> str:
    """ "3 95% · 4 5%, default 3, shadow 4 at 5%" """
    return f"{_splits_text(put.policy().splits)}, default {put.default_version}, {shadow_text(put.policy().shadow)}"


def _split_rows(form: Mapping[str, Any] | FormData) -> list[SplitRow]:
    items = form.multi_items() if isinstance(form, FormData) else list(form.items())
    rows: dict[str, str] = {}
    for key, value in items:
        if key.startswith("weight:") and isinstance(value, str):
            rows[key.removeprefix("weight:")] = value.strip()
    return [SplitRow(v, w) for v, w in rows.items()]


async def _shadow_problem(db: Any, *, model: Model, version: str) -> str | None:
    """Why the preview's shadow version would be refused on apply (the service says the same), or None."""
    found = next((v for v in await registry_service.list_versions(db, model=model) if v.version == version), None)
    if found is None:
        return f"model {model.name!r} has no version {version!r}"
    return f"version {version!r} is retired" if found.status == VersionStatus.RETIRED else None


@router.get("/models/{name}/preview")
async def traffic_preview(name: str, request: Request, visitor: VisitorDep, db: SessionDep) -> Response:
    """JSON for the traffic panel: who would move where if these weights were applied now."""
    if visitor.actor is None:
        return JSONResponse({"ok": False, "errors": {"": ["signed out: reload the page"]}}, 401)
    _reader(visitor)
    model = await registry_service.get_model_or_raise(db, name=name)
    current = await traffic_service.get_current(db, model=model)
    params = request.query_params
    rows = _split_rows(params)
    keep = set(current.policy.weights()) if current else set()
    default = params.get("default_version") or (current.policy.default_version if current else None) or "-"
    # A page without the shadow fields (an older one) previews the live shadow, as applying would keep it.
    shadow = forms.read_shadow(params) if forms.SHADOW_VERSION in params else ShadowRow.of(
        current.policy.shadow if current else None)
    live = current.revision if current else 0
    try:
        put = forms.traffic_put(splits=rows, keep=keep, default_version=default, rules=[], reason="", shadow=shadow)
        result = preview(_previous_layout(model, current), put.policy().bucket_counts())
    except FormInvalid as exc:
        return JSONResponse({"ok": False, "errors": exc.errors, "live_revision": live})
    except AllocationError as exc:
        return JSONResponse({"ok": False, "errors": {"splits": [str(exc)]}, "live_revision": live})
    if put.shadow is not None and (problem := await _shadow_problem(db, model=model, version=put.shadow.version)):
        return JSONResponse({"ok": False, "errors": {forms.SHADOW_VERSION: [problem]}, "live_revision": live})
    page_revision = forms.revision_of(params)
    covered = await version_coverage.load(db, model=model)
    warnings = covered.warnings(splits=version_coverage.weights_of(put), default=default if default != "-" else None,
                                rule_versions=version_coverage.rule_targets(current.policy.rules if current else ()))
    before = current.policy.shadow if current else None
    after = put.policy().shadow
    return JSONResponse({"ok": True, **result.as_dict(), "live_revision": live, "warnings": warnings,
                         "shadow": shadow_text(after) + ("" if after == before else f" (now {shadow_text(before)})"),
                         "stale": page_revision is not None and page_revision != live})


async def _apply(request: Request, visitor: Visitor, db: Any, publisher: Any, *, name: str, put: TrafficPut,
                 revision: int | None, on_invalid: Callable[[Errors], Coroutine[Any, Any, Response]],
                 layout: forms.Layout, done: str, attempted: str | None = None) -> Response:
    """``traffic_service.put`` with the page's revision as If-Match; refusals become pages, never overwrites."""
    actor = visitor.actor
    assert actor is not None
    if_match = traffic_service.etag(revision) if revision is not None else None
    try:
        written = await traffic_service.put(db, model_name=name, body=put, if_match=if_match, actor=actor,
                                            publisher=publisher)
    except PreconditionFailed as exc:
        await db.rollback()
        details = exc.details if isinstance(exc.details, dict) else {}
        if attempted is None:
            attempted = _policy_text(put)
        conflict = {"yours": revision, "live": details.get("live"), "changed_by": details.get("changed_by"),
                    "attempted": attempted, "message": exc.message}
        return await _model_page(request, visitor, db, name, status=409, conflict=conflict)
    except (InvalidInput, Conflict) as exc:
        await db.rollback()
        if isinstance(exc, InvalidInput) and isinstance(exc.details, list):
            errors = forms.errors_from_details(exc.details, layout)
        else:
            errors = {"": [exc.message]}
        return await on_invalid(errors)
    if written.revision == revision:  # identical to the live policy: nothing was written
        visitor.ui.flash("info", f"Nothing changed: revision {written.revision} already is this policy.")
        return _redirect(f"/ui/models/{quote(name)}#traffic")
    visitor.ui.flash("ok", f"{done} Revision {written.revision} is live: {_splits_text(written.policy.splits)}, "
                           f"default {written.policy.default_version}, {shadow_text(written.policy.shadow)}.")
    return _redirect(f"/ui/models/{quote(name)}#traffic")


@router.post("/models/{name}/traffic")
async def apply_traffic(name: str, request: Request, visitor: VisitorDep, db: SessionDep,
                        publisher: PublisherDep) -> Response:
    form = await _posted(request, visitor)
    actor = _reader(visitor)
    auth_service.authorize(actor, Permission.TRAFFIC_WRITE)
    model = await registry_service.get_model_or_raise(db, name=name)
    current = await traffic_service.get_current(db, model=model)
    rows = _split_rows(form)
    reason = str(form.get("reason") or "").strip()
    default = str(form.get("default_version") or "").strip()
    keep = set(current.policy.weights()) if current else set()
    # A form without the shadow fields (posted by an older page) keeps the live shadow rather than dropping it.
    shadow = forms.read_shadow(form) if forms.SHADOW_VERSION in form else ShadowRow.of(
        current.policy.shadow if current else None)

    async def refused(errors: Errors) -> Response:
        edit = _Edit("traffic", errors, weights={r.version: r.weight for r in rows}, default_version=default,
                     reason=reason, shadow=shadow)
        return await _model_page(request, visitor, db, name, status=422, edit=edit)

    try:
        put = forms.traffic_put(splits=rows, keep=keep, default_version=default,
                                rules=[r.to_json() for r in current.policy.rules] if current else [], reason=reason,
                                shadow=shadow)
    except FormInvalid as exc:
        return await refused(exc.errors)
    return await _apply(request, visitor, db, publisher, name=name, put=put, revision=forms.revision_of(form),
                        on_invalid=refused, layout=forms.layout_of(put), done="Traffic updated.")


ACTIONS = {"promote": "Promote", "rollback": "Roll back", "reapply": "Re-apply"}


async def _confirm_page(request: Request, visitor: Visitor, db: Any, *, name: str, action: str, version: str,
                        source: int | None, revision: int | None, reason: str = "", error: str | None = None,
                        status: int = 200) -> Response:
    model = await registry_service.get_model_or_raise(db, name=name)
    current = await traffic_service.get_current(db, model=model)
    put, what = await traffic_service.action_put(db, model=model, current=current, action=Action(action),
                                                 version=version, source=source, reason=reason)
    sentences: list[str] = []
    try:
        result = preview(_previous_layout(model, current), put.policy().bucket_counts())
        sentences = result.sentences()
    except AllocationError as exc:
        error = error or str(exc)
    versions = await registry_service.list_versions(db, model=model)
    covered = await version_coverage.load(db, model=model, versions=versions)
    warnings = covered.warnings(splits=version_coverage.weights_of(put), default=put.default_version,
                                rule_versions=version_coverage.rule_targets(put.rules))
    return _render(request, visitor, "confirm.html", {
        "warnings": warnings, "reason_required": action == "rollback",
        "model": model, "current": current, "action": action, "label": ACTIONS[action], "version": version,
        "source": source, "revision": revision if revision is not None else (current.revision if current else 0),
        "put": put, "after": put.policy().splits,
        "what": what, "sentences": sentences, "reason": reason, "error": error,
        "colors": _colors([v.version for v in versions]),
    }, status)


@router.get("/models/{name}/confirm/{action}")
async def confirm_action(name: str, action: str, request: Request, visitor: VisitorDep, db: SessionDep,
                         version: str = "", source: str = "") -> Response:
    actor = _reader(visitor)
    auth_service.authorize(actor, Permission.TRAFFIC_WRITE)
    if action not in ACTIONS:
        raise NotFound(f"no action {action!r}")
    return await _confirm_page(request, visitor, db, name=name, action=action, version=version,
                               source=forms.integer(source), revision=None)


@router.post("/models/{name}/actions/{action}")
async def run_action(name: str, action: str, request: Request, visitor: VisitorDep, db: SessionDep,
                     publisher: PublisherDep) -> Response:
    form = await _posted(request, visitor)
    actor = _reader(visitor)
    auth_service.authorize(actor, Permission.TRAFFIC_WRITE)
    if action not in ACTIONS:
        raise NotFound(f"no action {action!r}")
    version = str(form.get("version") or "")
    source_text = str(form.get("source") or "")
    source = forms.integer(source_text)
    revision = forms.revision_of(form)
    reason = str(form.get("reason") or "").strip()
    model = await registry_service.get_model_or_raise(db, name=name)
    current = await traffic_service.get_current(db, model=model)

    async def refused(errors: Errors) -> Response:
        message = "; ".join(f"{k}: {', '.join(v)}" if k and not k.startswith("weight:") else ", ".join(v)
                            for k, v in errors.items())
        return await _confirm_page(request, visitor, db, name=name, action=action, version=version, source=source,
                                   revision=revision, reason=reason, error=message, status=422)

    if len(reason) > 2000:
        return await refused({"reason": ["at most 2000 characters"]})
    if action == "rollback" and not reason:  # the history must say why a canary was pulled
        return await refused({"reason": ["say why you roll back; it is kept in the history"]})
    put, _ = await traffic_service.action_put(db, model=model, current=current, action=Action(action),
                                              version=version, source=source, reason=reason)
    done = {"promote": f"Promoted {version}.", "rollback": f"Rolled back {version}.",
            "reapply": f"Re-applied revision {source}."}[action]
    return await _apply(request, visitor, db, publisher, name=name, put=put, revision=revision,
                        on_invalid=refused, layout=forms.layout_of(put), done=done)


@router.post("/models/{name}/rules")
async def save_rules(name: str, request: Request, visitor: VisitorDep, db: SessionDep,
                     publisher: PublisherDep) -> Response:
    form = await _posted(request, visitor)
    actor = _reader(visitor)
    auth_service.authorize(actor, Permission.TRAFFIC_WRITE)
    model = await registry_service.get_model_or_raise(db, name=name)
    current = await traffic_service.get_current(db, model=model)
    rows = forms.read_rules(form)
    reason = str(form.get("reason") or "").strip()

    async def refused(errors: Errors) -> Response:
        edit = _Edit("rules", errors, reason=reason, rules=[r for r in rows if not r.blank])
        return await _model_page(request, visitor, db, name, status=422, edit=edit)

    if current is None:
        return await refused({"": ["set a traffic split first; rules are part of the traffic policy"]})
    rules, kept_rows, rule_errors = forms.rules_in(rows)
    splits = [SplitRow(s.version, fmt_weight(s.weight)) for s in current.policy.splits]
    try:
        put = forms.traffic_put(splits=splits, keep={s.version for s in splits},
                                default_version=current.policy.default_version or "", rules=rules, reason=reason,
                                shadow=ShadowRow.of(current.policy.shadow), extra_errors=rule_errors,
                                rule_rows=kept_rows)
    except FormInvalid as exc:
        return await refused(exc.errors)
    return await _apply(request, visitor, db, publisher, name=name, put=put, revision=forms.revision_of(form),
                        on_invalid=refused, layout=forms.layout_of(put, kept_rows), done="Rules saved.",
                        attempted=_rules_text(put))
