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


class TokenCreated(BaseModel):
    name: str
    role: Role
    prefix: str
    created_at: datetime
    token: str = Field(description="Shown once; only its hash is stored.")
