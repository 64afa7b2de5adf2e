"""Rollout tables: a rollout, the verdicts it was given, and the controller's leader lease."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from control_plane.db import Base, str_enum, utcnow


class RolloutState(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"


LIVE_STATES = (RolloutState.RUNNING, RolloutState.PAUSED)


class RolloutPhase(enum.StrEnum):
    SHADOW = "shadow"
    STEPS = "steps"
    DONE = "done"


class Rollout(Base):
    """One candidate moved from 0 to 100% in steps; all of the controller's state lives here."""

    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    # The model's id while running or paused, NULL once finished: a unique column, so two concurrent
    # starts cannot both create a live rollout, whatever the isolation level.
    live_model_id: Mapped[int | None] = mapped_column(unique=True, default=None)
    candidate: Mapped[str] = mapped_column(String(63))
    baseline: Mapped[str] = mapped_column(String(63))
    state: Mapped[RolloutState] = mapped_column(str_enum(RolloutState, 16), default=RolloutState.RUNNING)
    phase: Mapped[RolloutPhase] = mapped_column(str_enum(RolloutPhase, 16), default=RolloutPhase.STEPS)
    # 0-based index into steps; len(steps) once finished.
    step_index: Mapped[int] = mapped_column(default=0)
    # [{"weight", "pause_seconds", "pools"}], the last at 100.
    steps: Mapped[list[Any]]
    # When the current step's weight was live with the candidate ready: the pause counts from here,
    # so a restarted controller finds the time already served.
    step_started_at: Mapped[datetime | None] = mapped_column(default=None)
    # The live revision and its policy when the rollout started: what a rollback or an abort restores.
    start_revision: Mapped[int] = mapped_column(default=0)
    start_policy: Mapped[dict[str, Any]]
    analysis: Mapped[dict[str, Any]]
    gates: Mapped[dict[str, Any]]
    gate_evidence: Mapped[list[Any]] = mapped_column(default=list)
    override_gates: Mapped[bool] = mapped_column(default=False)
    shadow: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    started_by: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text, default="")
    # Why it ended (the failing verdict, or the person's reason for an abort or promotion).
    outcome: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)

    verdicts: Mapped[list[RolloutVerdict]] = relationship(
        back_populates="rollout", order_by="RolloutVerdict.id", cascade="all, delete-orphan")

    @property
    def actor_name(self) -> str:
        """The actor of the traffic revisions this rollout writes."""
        return f"rollout:{self.id}"


class RolloutVerdict(Base):
    """A judgement of one step, kept when its outcome changes (not at every tick)."""

    __tablename__ = "rollout_verdicts"

    id: Mapped[int] = mapped_column(primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    step_index: Mapped[int]
    verdict: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    # {gpu_arch: Judgement.as_dict()}
    per_arch: Mapped[dict[str, Any]] = mapped_column(default=dict)

    rollout: Mapped[Rollout] = relationship(back_populates="verdicts")


class ControllerLease(Base):
    """Leader election among control-plane replicas: one row per loop, held by one replica until it expires.

    A row rather than a Postgres advisory lock so the embedded SQLite mode runs
    the same code, and so every acting transaction can check (and extend) the
    lease in the same transaction as its decision: a replica that lost the
    lease while paused cannot write afterwards.
    """

    __tablename__ = "controller_leases"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime]
    acquired_at: Mapped[datetime] = mapped_column(default=utcnow)
