"""``grayroute reconcile --target local`` as a real process on the embedded SQLite database."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from control_plane import migrate
from control_plane.db import session_factory
from control_plane.deployments.models import Deployment
from control_plane.registry.models import Engine, Model, Pool, Version
from control_plane.reconciler.targets.local import free_port
from control_plane.traffic.models import TrafficRevision


def _seed(url: str) -> None:
    async def seed() -> None:
        engine = create_async_engine(url, poolclass=NullPool)
        async with session_factory(engine)() as session:
            session.add(Pool(name="cpu", gpu_arch="sm_80", kind="local", trt_version="10.3"))
            model = Model(name="digits", salt="digits", created_by="test")
            version = Version(version="v1", precision="fp16", trt_version="10.3", registered_by="test",
                              engines=[Engine(gpu_arch="sm_80", uri="file:///engines/v1.plan", sha256="a" * 64,
                                              trt_version="10.3")])
            model.versions.append(version)
            session.add(model)
            await session.flush()
            session.add(TrafficRevision(model_id=model.id, revision=1, default_version="v1",
                                        splits=[{"version": "v1", "weight": 100}], rules=[],
                                        allocation=[[0, 10000, "v1"]], salt="digits", created_by="test"))
            await session.commit()
        await engine.dispose()

    asyncio.run(seed())


def _rows(url: str) -> list[Deployment]:
    async def read() -> list[Deployment]:
        engine = create_async_engine(url, poolclass=NullPool)
        async with session_factory(engine)() as session:
            rows = list((await session.scalars(select(Deployment))).all())
        await engine.dispose()
        return rows

    return asyncio.run(read())


def _wait(predicate: Callable[[], Any], timeout: float = 40.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.2)


def _health(port: int) -> tuple[int, dict[str, Any]] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return response.status, json.loads(response.read())
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (ProcessLookupError, OSError):
        return False
    return state != "Z"


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.fixture
def reconciler_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, str]]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'grayroute.db'}"
    migrate.upgrade(url)
    _seed(url)
    port = free_port()
    env = {**os.environ, "GRAYROUTE_DATABASE_URL": url, "GRAYROUTE_STATE_DIR": str(tmp_path / "state")}
    env.pop("GRAYROUTE_REDIS_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "control_plane.cli", "reconcile", "--target", "local", "--health-port", str(port),
         "--health-host", "127.0.0.1", "--resync-seconds", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    yield process, port, url
    if process.poll() is None:
        process.kill()
        process.wait(10)


def test_reconcile_command_runs_local_engine_servers_and_stops_them(reconciler_process) -> None:
    process, port, url = reconciler_process
    status, body = _wait(lambda: _health(port))
    assert status == 200 and body["target"] == "local" and body["leader"] is True
    (row,) = _wait(lambda: [r for r in _rows(url) if r.phase == "Ready"] or None)
    assert row.ready_replicas == 1 and row.endpoints[0]["url"].startswith("http://127.0.0.1:")
    children = _children(process.pid)
    assert len(children) == 1
    process.send_signal(signal.SIGTERM)
    assert process.wait(20) == 0
    _wait(lambda: not _alive(children[0]), timeout=10)


def test_engine_servers_do_not_outlive_a_killed_reconciler(reconciler_process) -> None:
    process, port, url = reconciler_process
    _wait(lambda: [r for r in _rows(url) if r.phase == "Ready"] or None)
    children = _children(process.pid)
    assert children
    process.kill()  # no chance to clean up
    process.wait(10)
    for pid in children:
        _wait(lambda pid=pid: not _alive(pid), timeout=10)


def test_reconcile_command_against_kubernetes_holds_the_lease_and_releases_it(tmp_path: Path) -> None:
    from tests.reconciler.fake_apiserver import FakeApiServer

    url = f"sqlite+aiosqlite:///{tmp_path / 'grayroute.db'}"
    migrate.upgrade(url)
    _seed(url)

    async def kubernetes_pool() -> None:
        engine = create_async_engine(url, poolclass=NullPool)
        async with session_factory(engine)() as session:
            session.add(Pool(name="a100", gpu_arch="sm_80", kind="kubernetes", trt_version="10.3", namespace="gpu",
                             runtime_image="nvcr.io/nvidia/tritonserver:24.08-py3"))
            await session.commit()
        await engine.dispose()

    asyncio.run(kubernetes_pool())
    fake = FakeApiServer().start()
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
    port = free_port()
    env = {**os.environ, "GRAYROUTE_DATABASE_URL": url, "GRAYROUTE_STATE_DIR": str(tmp_path / "state")}
    env.pop("GRAYROUTE_REDIS_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "control_plane.cli", "reconcile", "--target", "kubernetes", "--namespace", "grayroute",
         "--kubeconfig", str(kubeconfig), "--health-port", str(port), "--health-host", "127.0.0.1",
         "--resync-seconds", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        (row,) = _wait(lambda: [r for r in _rows(url) if r.phase == "Ready"] or None)
        assert len(row.endpoints) == 1 and row.endpoints[0]["url"].startswith("http://10.")
        assert fake.names("deployments", "gpu") == {row_name := next(iter(fake.names("deployments", "gpu")))}
        assert row_name.startswith("digits-v1-a100-")
        lease = fake.get("leases", "grayroute", "grayroute-reconciler")
        assert lease is not None and lease["spec"]["holderIdentity"]
        status, body = _wait(lambda: _health(port))
        assert status == 200 and body["leader"] is True and body["target"] == "kubernetes"
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
        assert not fake.get("leases", "grayroute", "grayroute-reconciler")["spec"].get("holderIdentity")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        fake.stop()
