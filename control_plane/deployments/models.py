"""Deployment status per (version, pool): written by the reconciler, or the API for external pools."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from control_plane.db import Base, str_enum, utcnow


class Phase(enum.StrEnum):
    PENDING = "Pending"
    PROGRESSING = "Progressing"
    READY = "Ready"
    DRAINING = "Draining"
    FAILED = "Failed"


class Deployment(Base):
    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("version_id", "pool_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"), index=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("pools.id", ondelete="CASCADE"), index=True)
    desired_replicas: Mapped[int] = mapped_column(default=0)
    ready_replicas: Mapped[int] = mapped_column(default=0)
    # Ready backends only: [{"url": "http://10.0.0.7:8000"}, ...]
    endpoints: Mapped[list[Any]] = mapped_column(default=list)
    phase: Mapped[Phase] = mapped_column(str_enum(Phase, None), default=Phase.PENDING)
    message: Mapped[str] = mapped_column(Text, default="")
    # When the version left the active set; deleted after the drain period.
    draining_since: Mapped[datetime | None] = mapped_column(default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
