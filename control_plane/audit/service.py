"""Write and read audit events; writes join the caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.audit.models import AuditEvent

MAX_ID = 2**31 - 1  # audit_events.id is an INTEGER column

if TYPE_CHECKING:
    from control_plane.auth.service import Actor


async def record(
    session: AsyncSession,
    *,
    actor: Actor,
    action: str,
    target_type: str,
    target: str,
    model: str | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    reason: str = "",
) -> AuditEvent:
    """Add an audit event to the current transaction (committed with the change it describes)."""
    event = AuditEvent(actor=actor.name, actor_role=actor.role.value, action=action, target_type=target_type,
                       target=target, model=model, before=before, after=after, reason=reason)
    session.add(event)
    return event


async def list(  # noqa: A001 - the service verb
    session: AsyncSession, *, model: str | None = None, action: str | None = None, limit: int = 100,
    before_id: int | None = None,
) -> Sequence[AuditEvent]:
    """Newest first."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if model is not None:
        query = query.where(AuditEvent.model == model)
    if action is not None:
        query = query.where(AuditEvent.action == action)
    if before_id is not None and before_id <= MAX_ID:  # beyond the column's range: no bound at all
        query = query.where(AuditEvent.id < before_id)
    return (await session.scalars(query)).all()
