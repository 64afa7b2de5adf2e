"""Audit log endpoint."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from control_plane.audit import service as audit_service
from control_plane.audit.schemas import AuditEventRead
from control_plane.deps import Reader, SessionDep
from control_plane.errors import ERROR_RESPONSES

router = APIRouter(prefix="/api/v1", tags=["audit"], responses=ERROR_RESPONSES)


@router.get("/audit", response_model=list[AuditEventRead])
async def list_audit_events(
    session: SessionDep,
    _actor: Reader,
    # Postgres text cannot hold NUL, so a filter with one could never match: refuse it.
    model: Annotated[str | None, Query(max_length=63, pattern=r"^[^\x00]*$")] = None,
    action: Annotated[str | None, Query(max_length=64, pattern=r"^[^\x00]*$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before_id: Annotated[int | None, Query(ge=1, description="page: events older than this id")] = None,
) -> list[AuditEventRead]:
    events = await audit_service.list(session, model=model, action=action, limit=limit, before_id=before_id)
    return [AuditEventRead.model_validate(e) for e in events]
