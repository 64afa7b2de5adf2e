"""Traffic policy revisions: immutable, the newest is live."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from control_plane.db import Base, utcnow
from router.policy import Policy


def stored_policy(default_version: str | None, splits: list[Any], rules: list[Any]) -> Policy:
    """The policy held by a revision's columns (for queries that read the columns, not the row)."""
    return Policy.from_json({"default_version": default_version, "splits": splits, "rules": rules})


class TrafficRevision(Base):
    """One immutable state of a model's traffic policy; the newest is live."""

    __tablename__ = "traffic_revisions"
    __table_args__ = (UniqueConstraint("model_id", "revision"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    revision: Mapped[int]
    default_version: Mapped[str | None] = mapped_column(String(63))
    splits: Mapped[list[Any]]
    rules: Mapped[list[Any]]
    # [[start, end, version], ...] covering [0, 10000): who owns which buckets.
    allocation: Mapped[list[Any]]
    # The salt the allocation was cut for; a salt change starts a fresh layout.
    salt: Mapped[str] = mapped_column(String(256))
    reason: Mapped[str] = mapped_column(Text, default="")
    # Set when this revision re-applies an earlier one's weights.
    reapplied_from: Mapped[int | None] = mapped_column(default=None)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    # The policy columns are read and written only through this typed value.
    @property
    def policy(self) -> Policy:
        return stored_policy(self.default_version, self.splits, self.rules)

    @policy.setter
    def policy(self, policy: Policy) -> None:
        if policy.shadow is not None:
            raise ValueError("traffic revisions have no column for a shadow yet")
        stored = policy.to_json()
        self.default_version = stored["default_version"]
        self.splits = stored["splits"]
        self.rules = stored["rules"]
