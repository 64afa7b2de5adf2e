"""The reconciler against the real control plane: Postgres, Redis, the API, the snapshot.

Seeded through the API; the reconciler reads the database, runs deployments
(local processes and the Kubernetes double side by side), writes status that
``GET /models/{m}/deployments`` serves, and publishes snapshots with ready
endpoints.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from control_plane.db import create_engine, session_factory
from control_plane.traffic.publisher import SnapshotPublisher, notifier_for
from control_plane.reconciler import desired as D
from control_plane.reconciler.loop import Backoff, Reconciler
from control_plane.reconciler.service import DatabaseStore, load_inputs
from control_plane.reconciler.targets.kubernetes import KubernetesTarget
from control_plane.reconciler.targets.local import LocalTarget
from control_plane.settings import Settings
from router.policy import Policy
from tests.control_plane.conftest import Api, api, cp_server, cp_settings, role_tokens  # noqa: F401 - fixtures
from tests.reconciler.fake_apiserver import FakeApiServer

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
async def db(cp_settings: Settings) -> AsyncIterator[tuple[AsyncEngine, SnapshotPublisher]]:  # noqa: F811
    engine = create_engine(cp_settings)
    notifier = notifier_for(cp_settings.redis_url)
    await notifier.start()
    yield engine, SnapshotPublisher(session_factory(engine), notifier)
    await notifier.close()
    await engine.dispose()


async def _until(predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.1)


def _seed(api: Api) -> None:  # noqa: F811
    api.pool("cpu", gpu_arch="sm_80", kind="local")
    api.pool("a100", gpu_arch="sm_80", kind="kubernetes", namespace="gpu",
             runtime_image="nvcr.io/nvidia/tritonserver:24.08-py3")
    api.pool("h100", gpu_arch="sm_90", kind="external")
    api.model("digits", replicas={"a100": 4})
    api.version("digits", "v1", archs=("sm_80", "sm_90"), precision="fp32")
    api.version("digits", "v2", archs=("sm_80",))
    assert api.traffic("digits", {"v1": 75, "v2": 25}, default="v1").status_code == 200


def _deployments(api: Api) -> dict[tuple[str, str], dict[str, Any]]:  # noqa: F811
    response = api.as_("viewer").get("/models/digits/deployments")
    assert response.status_code == 200, response.text
    return {(d["version"], d["pool"]): d for d in response.json()}


def _snapshot_urls(api: Api, version: str) -> set[str]:  # noqa: F811
    snapshot = api.as_("router").get("/snapshot").json()
    return {e["url"] for e in snapshot["models"]["digits"]["versions"][version]["endpoints"]}


async def test_loader_maps_the_registry_and_traffic(api: Api, db) -> None:  # noqa: F811
    _seed(api)
    engine, _ = db
    async with session_factory(engine)() as session:
        inputs = await load_inputs(session, kind="local")
    (model,) = inputs.models
    assert model.name == "digits" and model.replicas == {"a100": 4}
    assert model.traffic == Policy("v1", (D.Split("v1", 75.0), D.Split("v2", 25.0)))
    assert {v.label: {e.gpu_arch for e in v.engines} for v in model.versions} == {"v1": {"sm_80", "sm_90"},
                                                                                   "v2": {"sm_80"}}
    assert {p.name: p.kind for p in inputs.pools} == {"cpu": "local", "a100": "kubernetes", "h100": "external"}
    plan = D.plan(inputs, kind="kubernetes", now=datetime.now(UTC), drain=timedelta(seconds=600))
    assert {(d.version, d.pool.name, d.replicas) for d in plan.deployments} == {("v1", "a100", 3), ("v2", "a100", 1)}


async def test_local_and_kubernetes_reconcilers_write_status_and_publish_snapshots(
    api: Api, db, tmp_path: Path  # noqa: F811
) -> None:
    _seed(api)
    engine, publisher = db
    sessions = session_factory(engine)
    fake = FakeApiServer().start()
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
    from control_plane.reconciler.targets.kubernetes import load_api_client

    local = Reconciler(store=DatabaseStore(sessions, publisher), target=LocalTarget(state_dir=tmp_path),
                       drain_seconds=1.0, resync_seconds=0.5, backoff=Backoff(base=0.1, cap=1))
    kube = Reconciler(
        store=DatabaseStore(sessions, publisher),
        target=KubernetesTarget(api_client=load_api_client(kubeconfig=str(kubeconfig)), namespace="grayroute",
                                request_timeout=2.0),
        drain_seconds=1.0, resync_seconds=0.5, backoff=Backoff(base=0.1, cap=1),
    )
    stop = asyncio.Event()
    revision_before = api.as_("router").get("/snapshot").json()["revision"]
    tasks = [asyncio.create_task(local.run(stop)), asyncio.create_task(kube.run(stop))]
    try:
        def converged() -> dict | None:
            rows = _deployments(api)
            wanted = {("v1", "cpu"), ("v2", "cpu"), ("v1", "a100"), ("v2", "a100")}
            if set(rows) >= wanted and all(rows[k]["phase"] == "Ready" for k in wanted):
                return rows
            return None

        rows = await _until(converged, timeout=60)
        assert ("v1", "h100") not in rows  # external pools are registered through the API, never reconciled
        assert rows[("v1", "a100")]["desired_replicas"] == 3 and rows[("v1", "a100")]["ready_replicas"] == 3
        assert len(rows[("v1", "a100")]["endpoints"]) == 3
        (v2_local,) = rows[("v2", "cpu")]["endpoints"]
        assert v2_local.startswith("http://127.0.0.1:")
        assert D.object_name("digits", "v1", "a100") in fake.names("deployments", "gpu")

        # The snapshot carries the ready endpoints, under a newer revision.
        snapshot = api.as_("router").get("/snapshot").json()
        assert snapshot["revision"] > revision_before
        assert v2_local in _snapshot_urls(api, "v2")
        assert set(rows[("v1", "a100")]["endpoints"]) <= _snapshot_urls(api, "v1")

        async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
            answer = await http.post(f"{v2_local}/v2/models/digits/versions/v2/infer", json={
                "inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]})
        assert answer.status_code == 200 and answer.json()["model_version"] == "v2"

        # Quiet resyncs write nothing to the API server.
        fake.reset_counts()
        await asyncio.sleep(1.5)
        assert fake.writes() == 0

        # Roll the canary back: v2 drains, then disappears from status, Kubernetes and the snapshot.
        assert api.traffic("digits", {"v1": 100}, default="v1").status_code == 200
        await _until(lambda: _deployments(api).get(("v2", "a100"), {}).get("phase") == "Draining", timeout=20)
        await _until(lambda: ("v2", "cpu") not in _deployments(api) and ("v2", "a100") not in _deployments(api),
                     timeout=20)
        assert D.object_name("digits", "v2", "a100") not in fake.names("deployments", "gpu")
        assert _snapshot_urls(api, "v2") == set()
        await _until(lambda: _deployments(api)[("v1", "a100")]["desired_replicas"] == 4)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        await local.target.close()
        await kube.target.close()
        fake.stop()
