"""How the UI's pages are answered: who is visiting, rendering, errors as pages, security headers.

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
from urllib.parse import urlencode

from fastapi import Depends, Request, Response
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData

from control_plane.auth import service as auth_service
from control_plane.auth.service import Actor, Permission
from control_plane.deps import SessionDep, SettingsDep
from control_plane.errors import (
    GrayrouteError,
    is_database_unreachable,
)
from control_plane.settings import Settings
from control_plane.traffic import service as traffic_service
from router.policy import Policy, Shadow, Split
from web import coverage as version_coverage
from web import history
from web import session as ui_session
from web.headers import UI_HEADERS
from web.session import CsrfRejected, LoginRequired, UISession

log = logging.getLogger(__name__)

HERE = Path(__file__).parent.parent
STATIC = HERE / "static"
# Each at least 4.5:1 against the white labels drawn on it (WCAG AA, checked by axe-core in the tests).
PALETTE = ("#2f6fde", "#c2410c", "#8250df", "#0e7a7c", "#bf3989", "#667300", "#8c5a2b", "#57606a")
HISTORY_PAGE = 25
PHASE_TONE = version_coverage.PHASE_TONE
_SECURITY_HEADERS = UI_HEADERS


@dataclass
class Visitor:
    ui: UISession
    actor: Actor | None
    settings: Settings


async def _visitor(request: Request, db: SessionDep, settings: SettingsDep) -> Visitor:
    ui = ui_session.load(request, settings)
    actor = None
    if ui.session_id is not None:
        actor = await auth_service.authenticate_browser_session(db, session_id=ui.session_id,
                                                                max_age_seconds=settings.session_max_age_seconds)
        if actor is None:
            ui.sign_out()
            ui.flash("info", "Your session is no longer valid (signed out, expired, or its token revoked). "
                             "Sign in again.")
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
    if signed_in and visitor.actor is None:
        raise LoginRequired  # before reading the body: nobody signed in gets it read
    form = await request.form()
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


def _splits_text(splits: Sequence[Split] | Sequence[Mapping[str, Any]] | None) -> str:
    if splits and not isinstance(splits[0], Split):  # a stored form: an audit event's, a conflict's live state
        splits = Policy.from_json({"splits": splits}).splits
    return traffic_service.splits_text(Policy(splits=tuple(splits or ())))  # type: ignore[arg-type]


def shadow_text(shadow: Shadow | Mapping[str, Any] | None) -> str:
    """ "shadow 4 at 5%" or "no shadow"; takes a policy's Shadow or its stored form."""
    if isinstance(shadow, Mapping):
        shadow = Shadow(str(shadow.get("version")), float(shadow.get("percent") or 0))
    return f"shadow {shadow.version} at {fmt_weight(shadow.percent)}%" if shadow else "no shadow"


templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters.update(ago=_ago, utc=_utc, weight=fmt_weight, splits=_splits_text, rules=history.rules_text,
                             shadow=shadow_text,
                             drain_left=version_coverage.drain_left)
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


def _colors(labels: Sequence[str]) -> dict[str, str]:
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(labels)}
