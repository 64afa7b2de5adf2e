"""The routing change counter: every committed change routers or reconcilers must see bumps it.

It is the snapshot's ``revision`` and sits at the bottom of the control plane
because every domain changes routing (a warm flag, an engine, a pool, a
traffic policy, a deployment becoming ready) while only ``traffic`` builds and
publishes the snapshot. A service bumps the counter inside its transaction
and hands the session to a ``Committer`` (the snapshot publisher), which
commits and then publishes what the bump announced.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from sqlalchemy import BigInteger, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from control_plane.db import Base, utcnow

_PENDING_KEY = "grayroute.snapshot_revision"


class SnapshotState(Base):
    """A single row: the routing snapshot's revision, bumped by every routing change."""

    __tablename__ = "snapshot_state"

    id: Mapped[int] = mapped_column(primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Committer(Protocol):
    """Commits a session; after the commit, announces the bumps it made (``traffic.publisher.SnapshotPublisher``)."""

    async def commit(self, session: AsyncSession) -> None: ...


async def bump(session: AsyncSession, *, model_id: int | None = None) -> int:
    """Increase the snapshot revision inside the current transaction.

    The single row is locked until commit, which also orders concurrent
    routing changes: revisions are published in commit order. ``model_id``
    names the one model the change touches (None: possibly any), so the
    publisher can rebuild just that model's part.
    """
    revision = int((await session.execute(
        update(SnapshotState).where(SnapshotState.id == 1)
        .values(revision=SnapshotState.revision + 1, updated_at=utcnow())
        .returning(SnapshotState.revision)
    )).scalar_one())
    session.info.setdefault(_PENDING_KEY, []).append((revision, model_id))
    return revision


def pending_bumps(session: AsyncSession) -> list[tuple[int, int | None]]:
    """(revision, model id) of each bump this session made and has not published (cleared on read)."""
    return list(session.info.pop(_PENDING_KEY, []))


async def current_revision(session: AsyncSession) -> int:
    return int((await session.execute(select(SnapshotState.revision).where(SnapshotState.id == 1))).scalar_one())
