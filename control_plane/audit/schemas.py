"""API shapes for audit events."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class AuditEventRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    actor: str
    actor_role: str
    action: str
    target_type: str
    target: str
    model: str | None
    reason: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
