"""The local reconciler embedded in a control-plane process: a publish wakes it at once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from control_plane import migrate
from control_plane.db import session_factory
from control_plane.traffic.publisher import InProcessNotifier, SnapshotPublisher
from control_plane.reconciler import embedded
from control_plane.deployments.models import Deployment
from control_plane.registry.models import Engine, Model, Pool, Version
from control_plane import changes
from control_plane.traffic.models import TrafficRevision


async def test_publish_wakes_the_embedded_reconciler(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'grayroute.db'}"
    await asyncio.to_thread(migrate.upgrade, url)
    engine = create_async_engine(url, poolclass=NullPool)
    sessions = session_factory(engine)
    publisher = SnapshotPublisher(sessions, InProcessNotifier())
    async with sessions() as session:
        session.add(Pool(name="cpu", gpu_arch="sm_80", kind="local", trt_version="10.3"))
        model = Model(name="digits", salt="digits", created_by="test")
        model.versions.append(Version(version="v1", precision="fp32", trt_version="10.3", registered_by="test",
                                      engines=[Engine(gpu_arch="sm_80", uri="file:///v1.plan", sha256="a" * 64,
                                                      trt_version="10.3")]))
        session.add(model)
        await session.commit()

    reconciler = embedded.local_reconciler(sessions=sessions, publisher=publisher, state_dir=tmp_path / "state",
                                           resync_seconds=120)
    stop = asyncio.Event()
    task = asyncio.create_task(reconciler.run(stop))
    try:
        for _ in range(200):  # up to 10 s: the first pass imports and opens a lot on a busy machine
            if reconciler.passes >= 1:
                break
            await asyncio.sleep(0.05)
        assert reconciler.passes >= 1  # nothing active yet

        async with sessions() as session:
            session.add(TrafficRevision(model_id=model.id, revision=1, default_version="v1",
                                        splits=[{"version": "v1", "weight": 100}], rules=[],
                                        allocation=[[0, 10000, "v1"]], salt="digits", created_by="test"))
            await changes.bump(session)
            await publisher.commit(session)

        deadline = time.monotonic() + 30  # far below the 120 s resync
        ready: list[Deployment] = []
        while time.monotonic() < deadline and not ready:
            async with sessions() as session:
                ready = list((await session.scalars(select(Deployment).where(Deployment.phase == "Ready"))).all())
            await asyncio.sleep(0.2)
        assert ready and ready[0].endpoints[0]["url"].startswith("http://127.0.0.1:")
        encoded = (await publisher.encoded())[1].decode()
        assert ready[0].endpoints[0]["url"] in encoded  # the reconciler published the endpoint
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await reconciler.target.close()
        await engine.dispose()
