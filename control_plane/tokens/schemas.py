"""API shapes for tokens."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from control_plane.auth.service import Role


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[\w.@:-]+$")]
    role: Role


class TokenRead(BaseModel):
    """A token as listed: never the secret, only the prefix people can recognise it by."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    role: Role
    prefix: str
    created_by: str
    created_at: datetime
    revoked_at: datetime | None


class TokenCreated(BaseModel):
    id: int
    name: str
    role: Role
    prefix: str
    created_at: datetime
    token: str = Field(description="Shown once; only its hash is stored.")
