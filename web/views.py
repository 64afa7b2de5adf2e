"""Pages of the UI. Views call control-plane services only; every change is authorized here.

The services trust their callers with roles, so each POST calls
``auth_service.authorize`` before it changes anything, and pages offer only
what the signed-in role may do.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData

from control_plane.audit import service as audit_service
from control_plane.auth import service as auth_service
from control_plane.auth.service import Actor, Permission
from control_plane.deps import PublisherDep, SessionDep, SettingsDep
from control_plane.errors import (
    Conflict,
    GrayrouteError,
    InvalidInput,
    NotFound,
    PreconditionFailed,
    Unauthenticated,
    is_database_unreachable,
)
from control_plane.registry import service as registry_service
from control_plane.registry.models import Model, VersionStatus
from control_plane.registry.schemas import VersionUpdate
from control_plane.settings import Settings
from control_plane.traffic import service as traffic_service
from control_plane.traffic.models import TrafficRevision
from control_plane.traffic.preview import preview
from control_plane.traffic.schemas import TrafficPut
from router.routing import AllocationError, Range, bucket_counts
from web import figures as live_figures
from web import forms
from web import session as ui_session
from web.forms import Errors, FormInvalid, RuleRow, SplitRow
from web.session import CsrfRejected, LoginRequired, UISession

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
STATIC = HERE / "static"
PALETTE = ("#2f6fde", "#e8590c", "#8250df", "#0f8b8d", "#bf3989", "#7d8b00", "#8c5a2b", "#57606a")
HISTORY_PAGE = 25
PHASE_TONE = {"Ready": "ok", "Progressing": "warn", "Pending": "warn", "Draining": "muted", "Failed": "bad"}
_SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                                "script-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


# --- plumbing: who is visiting, how pages and errors are answered ------------------------------

@dataclass
class Visitor:
    ui: UISession
    actor: Actor | None
    settings: Settings


async def _visitor(request: Request, db: SessionDep, settings: SettingsDep) -> Visitor:
    ui = ui_session.load(request, settings)
    actor = None
    if ui.token_hash is not None:
        actor = await auth_service.authenticate_hash(db, token_hash=ui.token_hash)
        if actor is None:
            ui.sign_out()
            ui.flash("info", "Your token is no longer valid (revoked?). Sign in with a current one.")
    visitor = Visitor(ui, actor, settings)
    request.state.ui_visitor = visitor
    return visitor


VisitorDep = Annotated[Visitor, Depends(_visitor)]


def _reader(visitor: Visitor) -> Actor:
    if visitor.actor is None:
        raise LoginRequired
    auth_service.authorize(visitor.actor, Permission.READ)
    return visitor.actor


async def _posted(request: Request, visitor: Visitor, *, signed_in: bool = True) -> FormData:
    """The form of a state-changing request, after its CSRF token was checked."""
    form = await request.form()
    if signed_in and visitor.actor is None:
        raise LoginRequired
    visitor.ui.check_csrf(form.get(ui_session.CSRF_FIELD))
    return form


def _static_version() -> str:
    digest = hashlib.sha256()
    for path in sorted(STATIC.iterdir()):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def _ago(moment: datetime | None) -> str:
    if moment is None:
        return ""
    seconds = (datetime.now(UTC) - moment).total_seconds()
    if seconds < 45:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return "1 min ago"


def _utc(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else ""


def fmt_weight(value: Any) -> str:
    """95.0 -> "95", 4.25 -> "4.25" (weights are exact to 0.01)."""
    return format(Decimal(str(value)).normalize(), "f")


def _splits_text(splits: Sequence[Mapping[str, Any]] | None) -> str:
    return " · ".join(f"{s['version']} {fmt_weight(s['weight'])}%" for s in splits or ()) or "–"


templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters.update(ago=_ago, utc=_utc, weight=fmt_weight, splits=_splits_text)
templates.env.globals.update(P=Permission, PHASE_TONE=PHASE_TONE, static_version=_static_version())


def _render(request: Request, visitor: Visitor | None, name: str, context: dict[str, Any],
            status: int = 200) -> Response:
    base: dict[str, Any] = {"actor": None, "csrf": "", "flashes": [], "visitor": visitor}
    if visitor is not None:
        base.update(actor=visitor.actor, csrf=visitor.ui.csrf, flashes=visitor.ui.pop_flashes())
    return templates.TemplateResponse(request, name, {**base, **context}, status_code=status)


def _error_page(request: Request, status: int, title: str, message: str, details: Any = None) -> Response:
    visitor = getattr(request.state, "ui_visitor", None)
    return _render(request, visitor, "error.html", {"title": title, "message": message, "details": details}, status)


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


class _PageRoute(APIRoute):
    """Turns the control plane's errors into pages (the API's handlers answer JSON) and saves the session."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page(request: Request) -> Response:
            try:
                response = await handler(request)
            except LoginRequired:
                target = request.url.path if request.method == "GET" else "/ui/"
                response = _redirect("/ui/login?" + urlencode({"next": target}))
            except CsrfRejected:
                response = _error_page(request, 403, "Form refused",
                                       "This form was not sent by a page of this site, or your session changed "
                                       "since the page was loaded (CSRF check). Nothing was changed. Reload the "
                                       "page and try again.")
            except GrayrouteError as exc:
                title = {403: "Not allowed", 404: "Not found"}.get(exc.status_code, "Request refused")
                response = _error_page(request, exc.status_code, title, exc.message)
            except Exception as exc:  # noqa: BLE001 - a person gets a page, the log gets the traceback
                if is_database_unreachable(exc):
                    log.warning("database unreachable: %s", exc)
                    response = _error_page(request, 503, "Database unreachable",
                                           "The control plane cannot reach its database right now. Retry shortly.")
                else:
                    log.exception("UI page %s failed", request.url.path)
                    response = _error_page(request, 500, "Something went wrong",
                                           "This page failed on the server; the details are in the "
                                           "control plane's log. Reload the model page to see the current state.")
            visitor: Visitor | None = getattr(request.state, "ui_visitor", None)
            if visitor is not None:
                visitor.ui.save(response, visitor.settings)
            for name, value in _SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return page


router = APIRouter(prefix="/ui", route_class=_PageRoute, include_in_schema=False)


def install(app: FastAPI) -> None:
    """Called by ``create_app``: the pages and the files they need (served here; no CDN)."""
    # The files first: the pages end with a catch-all that answers unknown /ui paths with a page.
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")
    app.include_router(router)


# --- sign in and out --------------------------------------------------------------------------

def _page_cursor(text: str) -> int | None:
    # str.isdigit() accepts "²" and other digits int() refuses; a cursor is a short ASCII number.
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


def _safe_next(target: str | None) -> str:
    # Only our own pages: never an absolute or scheme-relative URL.
    if target and target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui/"


@router.get("/login")
async def login_page(request: Request, visitor: VisitorDep, next: str = "/ui/") -> Response:  # noqa: A002
    if visitor.actor is not None and visitor.actor.can(Permission.READ):
        return _redirect(_safe_next(next))
    return _render(request, visitor, "login.html", {"next": _safe_next(next), "error": None})


@router.post("/login")
async def login(request: Request, visitor: VisitorDep, db: SessionDep) -> Response:
    form = await _posted(request, visitor, signed_in=False)
    target = _safe_next(str(form.get("next") or ""))
    token = str(form.get("token") or "").strip()
    error = None
    if not token:
        error = "Paste an API token."
    else:
        try:
            actor = await auth_service.authenticate(db, token=token)
        except Unauthenticated:
            error = "Unknown or revoked token."
        else:
            if not actor.can(Permission.READ):
                error = f"Tokens with the role {actor.role.value!r} cannot use the UI."
            else:
                visitor.ui.sign_in(auth_service.hash_token(token))
                return _redirect(target)
    return _render(request, visitor, "login.html", {"next": target, "error": error}, 401)


@router.post("/logout")
async def logout(request: Request, visitor: VisitorDep) -> Response:
    await _posted(request, visitor, signed_in=False)
    visitor.ui.sign_out()
    visitor.ui.flash("info", "Signed out.")
    return _redirect("/ui/login")


# --- the models overview -----------------------------------------------------------------------

def _colors(labels: Sequence[str]) -> dict[str, str]:
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(labels)}


def _pool_health(deployments: Sequence[tuple[Any, Any, Any]]) -> list[dict[str, Any]]:
    """Per pool: how many of the model's deployments there are ready, and the worst phase."""
    rank = {"bad": 3, "warn": 2, "muted": 1, "ok": 0}
    pools: dict[str, dict[str, Any]] = {}
    for deployment, version, pool in deployments:
        entry = pools.setdefault(pool.name, {"pool": pool.name, "gpu_arch": pool.gpu_arch, "ready": 0, "total": 0,
                                             "tone": "ok", "versions": []})
        tone = PHASE_TONE.get(deployment.phase, "warn")
        entry["total"] += 1
        entry["ready"] += deployment.phase == "Ready" and deployment.ready_replicas > 0
        entry["versions"].append(f"{version.version}: {deployment.phase} "
                                 f"{deployment.ready_replicas}/{deployment.desired_replicas}")
        if rank[tone] > rank[entry["tone"]]:
            entry["tone"] = tone
    return list(pools.values())


@router.get("/")
async def overview(request: Request, visitor: VisitorDep, db: SessionDep) -> Response:
    _reader(visitor)
    rows = []
    models = await registry_service.list_models(db)
    live = await traffic_service.current_by_model(db, model_ids=[m.id for m in models])
    for model in models:
        current = live.get(model.id)
        last = await audit_service.list(db, model=model.name, limit=1)
        labels = [v.version for v in model.versions]
        rows.append({
            "model": model,
            "current": current,
            "colors": _colors(labels),
            "versions": [v for v in model.versions if v.status != VersionStatus.RETIRED],
            "health": _pool_health(await registry_service.list_deployments(db, model=model)),
            "last": last[0] if last else None,
        })
    return _render(request, visitor, "overview.html", {"rows": rows})


# --- the model page ----------------------------------------------------------------------------

def _weights(current: TrafficRevision | None) -> dict[str, str]:
    return {s["version"]: fmt_weight(s["weight"]) for s in current.splits} if current else {}


def _offered(current: TrafficRevision | None, versions: Sequence[Any]) -> list[str]:
    """Rows of the traffic form: the split's versions in order, then the others that could take traffic."""
    labels = [s["version"] for s in current.splits] if current else []
    labels += [v.version for v in versions if v.version not in labels and v.status != VersionStatus.RETIRED]
    return labels


def _previous_layout(model: Model, current: TrafficRevision | None) -> list[Range] | None:
    # The same choice traffic_service.put makes: a changed salt starts a fresh layout.
    if current is None or current.salt != model.salt:
        return None
    return [(s, e, v) for s, e, v in current.allocation]


def _rules_text(put: TrafficPut) -> str:
    return "rules: " + ("; ".join(f"{r.name} → {r.version}" for r in put.rules) or "none")


def _target_label(event: Any, model: str) -> str:
    """Targets relative to the page's model: "resnet50/4@a100" -> "4@a100", "resnet50" -> "traffic"."""
    if event.target == model:
        return str(event.target_type)
    return str(event.target).removeprefix(model + "/")


def _change_summary(event: Any) -> str:
    before, after = event.before or {}, event.after or {}
    if event.target_type == "traffic":
        text = _splits_text(after.get("splits"))
        if after.get("default_version") != before.get("default_version") and after.get("default_version"):
            text += f"; default {after.get('default_version')}"
        return text
    changed = [k for k in after if k in before and after[k] != before[k] and k != "engines"]
    if changed:
        return "; ".join(f"{k}: {before[k]} → {after[k]}" for k in changed[:3])
    return ""


@dataclass
class _Edit:
    """What the person submitted, re-shown with its errors when it was refused."""

    form: str  # "traffic" | "rules"
    errors: Errors
    weights: dict[str, str] | None = None
    default_version: str | None = None
    reason: str = ""
    rules: list[RuleRow] | None = None


async def _model_page(request: Request, visitor: Visitor, db: Any, name: str, *, status: int = 200,
                      edit: _Edit | None = None, conflict: dict[str, Any] | None = None,
                      revisions_before: int | None = None, events_before: int | None = None) -> Response:
    actor = _reader(visitor)
    model = await registry_service.get_model_or_raise(db, name=name)
    versions = await registry_service.list_versions(db, model=model)
    current = await traffic_service.get_current(db, model=model)
    deployments = await registry_service.list_deployments(db, model=model)
    colors = _colors([v.version for v in versions])
    weights = _weights(current)
    default = current.default_version if current else None
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
        RuleRow.of(i, r) for i, r in enumerate(current.rules if current else [])]
    rule_rows = [*rule_rows, RuleRow(len(rule_rows))]  # one empty row to add a rule
    candidates = [s["version"] for s in (current.splits if current else [])
                  if s["version"] != default and s["weight"] > 0]
    figures = await live_figures.load(request.app.state, model=model.name, default_version=default,
                                      versions=[v.version for v in versions], colors=colors,
                                      weights=live_figures.weights_of(current))
    context = {
        "model": model, "current": current, "default": default, "colors": colors,
        "versions": version_rows, "traffic_rows": traffic_rows, "rule_rows": rule_rows,
        "candidates": candidates,
        "selectable": [v.version for v in versions if v.status != VersionStatus.RETIRED],
        "revisions": await traffic_service.list_revisions(db, model=model, limit=HISTORY_PAGE,
                                                          before=revisions_before),
        "revisions_paged": revisions_before is not None, "events_paged": events_before is not None,
        "page_size": HISTORY_PAGE,
        "events": [(e, _target_label(e, model.name), _change_summary(e))
                   for e in await audit_service.list(db, model=model.name, limit=HISTORY_PAGE,
                                                     before_id=events_before)],
        "figures": figures,
        "edit": edit, "errors": edit.errors if edit else {},
        "edit_default": edit.default_version if edit and edit.default_version else default,
        "conflict": conflict,
        "can_traffic": actor.can(Permission.TRAFFIC_WRITE),
        "can_operate": actor.can(Permission.VERSIONS_OPERATE),
    }
    return _render(request, visitor, "model.html", context, status)


@router.get("/models/{name}")
async def model_page(name: str, request: Request, visitor: VisitorDep, db: SessionDep, revisions_before: str = "",
                     events_before: str = "") -> Response:
    """The model page; ``revisions_before`` / ``events_before`` page back through the history."""
    return await _model_page(request, visitor, db, name,
                             revisions_before=_page_cursor(revisions_before), events_before=_page_cursor(events_before))


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
                                      default_version=current.default_version if current else None,
                                      versions=versions, colors=colors, window=live_figures.window_of(window),
                                      weights=live_figures.weights_of(current))
    return templates.TemplateResponse(request, "_figures.html", {"model": model, "figures": figures,
                                                                 "colors": colors})


# --- traffic: preview, apply, quick actions ---------------------------------------------------

def _split_rows(form: Mapping[str, Any] | FormData) -> list[SplitRow]:
    items = form.multi_items() if isinstance(form, FormData) else list(form.items())
    rows: dict[str, str] = {}
    for key, value in items:
        if key.startswith("weight:") and isinstance(value, str):
            rows[key.removeprefix("weight:")] = value.strip()
    return [SplitRow(v, w) for v, w in rows.items()]


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
    keep = {s["version"] for s in current.splits} if current else set()
    default = params.get("default_version") or (current.default_version if current else None) or "-"
    live = current.revision if current else 0
    try:
        put = forms.traffic_put(splits=rows, keep=keep, default_version=default, rules=[], reason="")
        result = preview(_previous_layout(model, current), bucket_counts((s.version, s.weight) for s in put.splits))
    except FormInvalid as exc:
        return JSONResponse({"ok": False, "errors": exc.errors, "live_revision": live})
    except AllocationError as exc:
        return JSONResponse({"ok": False, "errors": {"splits": [str(exc)]}, "live_revision": live})
    page_revision = forms.revision_of(params)
    return JSONResponse({"ok": True, **result.as_dict(), "live_revision": live,
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
            tried = [{"version": s.version, "weight": s.weight} for s in put.splits]
            attempted = f"{_splits_text(tried)}, default {put.default_version}"
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
    visitor.ui.flash("ok", f"{done} Revision {written.revision} is live: {_splits_text(written.splits)}, "
                           f"default {written.default_version}.")
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
    keep = {s["version"] for s in current.splits} if current else set()

    async def refused(errors: Errors) -> Response:
        edit = _Edit("traffic", errors, weights={r.version: r.weight for r in rows}, default_version=default,
                     reason=reason)
        return await _model_page(request, visitor, db, name, status=422, edit=edit)

    try:
        put = forms.traffic_put(splits=rows, keep=keep, default_version=default,
                                rules=current.rules if current else [], reason=reason)
    except FormInvalid as exc:
        return await refused(exc.errors)
    return await _apply(request, visitor, db, publisher, name=name, put=put, revision=forms.revision_of(form),
                        on_invalid=refused, layout=forms.layout_of(put), done="Traffic updated.")


ACTIONS = {"promote": "Promote", "rollback": "Roll back", "reapply": "Re-apply"}


async def _action_put(db: Any, model: Model, current: TrafficRevision | None, action: str, *, version: str,
                      source: int | None, reason: str) -> tuple[TrafficPut, str]:
    """The policy a quick action would write, and a sentence saying what it does."""
    if current is None:
        raise InvalidInput.field("action", f"model {model.name!r} has no traffic policy yet")
    splits = [{"version": s["version"], "weight": fmt_weight(s["weight"])} for s in current.splits]
    body: dict[str, Any] = {"rules": current.rules, "reason": reason}
    if action == "promote":
        if version not in [s["version"] for s in splits]:
            splits.append({"version": version, "weight": "0"})
        for split in splits:
            split["weight"] = "100" if split["version"] == version else "0"
        body.update(default_version=version, splits=splits)
        what = f"{version} gets 100% of traffic and becomes the default version."
    elif action == "rollback":
        default = current.default_version
        if version == default:
            raise InvalidInput.field("version", f"{version} is the default version; promote another version instead")
        moved = next((Decimal(s["weight"]) for s in splits if s["version"] == version), Decimal(0))
        if default not in [s["version"] for s in splits]:
            splits.append({"version": default, "weight": "0"})
        for split in splits:
            if split["version"] == version:
                split["weight"] = "0"
            elif split["version"] == default:
                split["weight"] = fmt_weight(Decimal(split["weight"]) + moved)
        body.update(default_version=default, splits=splits)
        what = f"{version} gets 0% of traffic; its {fmt_weight(moved)}% go back to the default version {default}."
    elif action == "reapply":
        if source is None:
            raise InvalidInput.field("revision", "which revision to re-apply?")
        old = await traffic_service.get_revision_or_raise(db, model=model, revision=source)
        body.update(default_version=old.default_version, rules=old.rules, reapplied_from=old.revision,
                    splits=[{"version": s["version"], "weight": fmt_weight(s["weight"])} for s in old.splits])
        what = (f"Revision {old.revision}'s policy ({_splits_text(old.splits)}, default {old.default_version}) "
                "becomes live again, as a new revision.")
    else:
        raise NotFound(f"no action {action!r}")
    try:
        return TrafficPut.model_validate(body), what
    except Exception as exc:  # noqa: BLE001 - an old revision may not pass today's rules
        raise InvalidInput.field("action", f"this action cannot be applied: {exc}") from None


async def _confirm_page(request: Request, visitor: Visitor, db: Any, *, name: str, action: str, version: str,
                        source: int | None, revision: int | None, reason: str = "", error: str | None = None,
                        status: int = 200) -> Response:
    model = await registry_service.get_model_or_raise(db, name=name)
    current = await traffic_service.get_current(db, model=model)
    put, what = await _action_put(db, model, current, action, version=version, source=source, reason=reason)
    sentences: list[str] = []
    try:
        result = preview(_previous_layout(model, current), bucket_counts((s.version, s.weight) for s in put.splits))
        sentences = result.sentences()
    except AllocationError as exc:
        error = error or str(exc)
    versions = await registry_service.list_versions(db, model=model)
    return _render(request, visitor, "confirm.html", {
        "model": model, "current": current, "action": action, "label": ACTIONS[action], "version": version,
        "source": source, "revision": revision if revision is not None else (current.revision if current else 0),
        "put": put, "after": [{"version": s.version, "weight": float(s.weight)} for s in put.splits],
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
                               source=int(source) if source.isdigit() else None, revision=None)


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
    source = int(source_text) if source_text.isdigit() else None
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
    put, _ = await _action_put(db, model, current, action, version=version, source=source, reason=reason)
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
    splits = [SplitRow(s["version"], fmt_weight(s["weight"])) for s in current.splits]
    try:
        put = forms.traffic_put(splits=splits, keep={s.version for s in splits},
                                default_version=current.default_version or "", rules=rules, reason=reason,
                                extra_errors=rule_errors, rule_rows=kept_rows)
    except FormInvalid as exc:
        return await refused(exc.errors)
    return await _apply(request, visitor, db, publisher, name=name, put=put, revision=forms.revision_of(form),
                        on_invalid=refused, layout=forms.layout_of(put, kept_rows), done="Rules saved.",
                        attempted=_rules_text(put))


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
        visitor.ui.flash("ok", f"Version {version} is {'kept warm' if warm else 'no longer kept warm'}.")
    return _redirect(f"/ui/models/{quote(name)}#versions")


@router.get("/{rest:path}")
async def not_found(rest: str, visitor: VisitorDep) -> Response:
    _reader(visitor)
    raise NotFound(f"there is no page at /ui/{rest}")
