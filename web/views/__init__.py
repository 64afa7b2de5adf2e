"""The release managers' UI under ``/ui``, one module per page; views call control-plane services only.

    pages     plumbing: visitor, rendering, errors as pages, formatting filters
    session   sign in and out
    overview  the models overview
    model     the model page (and its live-figures panel, the warm toggle)
    traffic   traffic changes: preview, apply, rules, quick actions
    report    the version report: baseline against candidate per GPU architecture, printable, CSV and JSON

The services trust their callers with roles, so each POST calls
``auth_service.authorize`` before it changes anything.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Response
from fastapi.staticfiles import StaticFiles

from control_plane.errors import NotFound
from web.headers import SecurityHeaders
from web.views import model, overview, report, session, traffic
from web.views.pages import STATIC, VisitorDep, _PageRoute, _reader

router = APIRouter(prefix="/ui", route_class=_PageRoute, include_in_schema=False)


def install(app: FastAPI) -> None:
    """Called by ``create_app``: the pages and the files they need (served here; no CDN)."""
    # The files first: the pages end with a catch-all that answers unknown /ui paths with a page.
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")
    for page in (session, overview, model, traffic, report):
        app.include_router(page.router)
    app.include_router(router)  # last: its catch-all answers unknown /ui paths
    app.add_middleware(SecurityHeaders)  # static files and /docs too, not only pages


@router.get("/{rest:path}")
async def not_found(rest: str, visitor: VisitorDep) -> Response:
    _reader(visitor)
    raise NotFound(f"there is no page at /ui/{rest}")
