"""The local reconciler inside another process (the embedded control plane or the demo).

In the same process the snapshot publisher can wake the loop directly, so a
traffic change reaches the engine servers without waiting for a resync::

    reconciler = embedded.local_reconciler(sessions=sessions, publisher=publisher, state_dir=settings.state_dir)
    task = asyncio.create_task(reconciler.run(stop))
    ...
    stop.set(); await task; await reconciler.target.close()
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from control_plane.traffic.publisher import SnapshotPublisher
from control_plane.reconciler.engine_server import Fault
from control_plane.reconciler.loop import Reconciler
from control_plane.reconciler.service import DatabaseStore
from control_plane.reconciler.targets.local import LocalTarget


def local_reconciler(
    *,
    sessions: async_sessionmaker[AsyncSession],
    publisher: SnapshotPublisher,
    state_dir: Path,
    drain_seconds: float = 600.0,
    resync_seconds: float = 30.0,
    faults: Mapping[str, Fault] | None = None,
) -> Reconciler:
    reconciler = Reconciler(
        store=DatabaseStore(sessions, publisher),
        target=LocalTarget(state_dir=state_dir, faults=faults),
        drain_seconds=drain_seconds,
        resync_seconds=resync_seconds,
    )

    async def wake(_revision: int) -> None:
        reconciler.wake()

    publisher.listeners.append(wake)
    return reconciler
