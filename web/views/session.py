"""Signing in with an API token, and out."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from control_plane.auth import service as auth_service
from control_plane.auth.service import Permission
from control_plane.deps import SessionDep
from control_plane.errors import (
    Unauthenticated,
)
from web.views.pages import VisitorDep, _PageRoute, _posted, _redirect, _render

router = APIRouter(prefix="/ui", route_class=_PageRoute, include_in_schema=False)


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
                visitor.ui.sign_in(await auth_service.start_browser_session(
                    db, actor=actor, max_age_seconds=visitor.settings.session_max_age_seconds))
                return _redirect(target)
    return _render(request, visitor, "login.html", {"next": target, "error": error}, 401)


@router.post("/logout")
async def logout(request: Request, visitor: VisitorDep, db: SessionDep) -> Response:
    await _posted(request, visitor, signed_in=False)
    if visitor.ui.session_id is not None:
        await auth_service.end_browser_session(db, session_id=visitor.ui.session_id)
    visitor.ui.sign_out()
    visitor.ui.flash("info", "Signed out.")
    return _redirect("/ui/login")
