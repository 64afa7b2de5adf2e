"""Fixtures for the reconciler: the API-server double, clients pointed at it, an in-memory store."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from kubernetes import client

from control_plane.reconciler import desired as D
from control_plane.reconciler.status import StatusRow
from control_plane.reconciler.targets.kubernetes import load_api_client
from router.policy import Policy
from tests.reconciler.fake_apiserver import FakeApiServer

SHA = "ab" * 32


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    server = FakeApiServer().start()
    yield server
    server.stop()


@pytest.fixture
def kubeconfig(apiserver: FakeApiServer, tmp_path: Path) -> Path:
    return apiserver.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def api_client_factory(kubeconfig: Path) -> Iterator[Callable[[], client.ApiClient]]:
    made: list[client.ApiClient] = []

    def make() -> client.ApiClient:
        api = load_api_client(kubeconfig=str(kubeconfig))
        made.append(api)
        return api

    yield make
    for api in made:
        api.close()


@dataclass
class MemoryStore:
    """The loop's Store without a database: inputs set by the test, status rows kept in a dict."""

    inputs: D.Inputs
    rows: dict[D.DeploymentKey, StatusRow] = field(default_factory=dict)
    publishes: int = 0
    saves: int = 0
    fail_loads: int = 0

    async def load(self, *, kind: str) -> D.Inputs:
        if self.fail_loads:
            self.fail_loads -= 1
            raise ConnectionError("database unavailable")
        previous = tuple(
            D.PreviousStatus(r.version_id, r.pool_id, r.desired_replicas, r.phase.value, r.draining_since)
            for r in self.rows.values()
        )
        return replace(self.inputs, previous=previous)

    async def save(self, rows: Sequence[StatusRow], removed: Sequence[D.DeploymentKey], *, kind: str) -> bool:
        self.saves += 1
        routing = False
        for row in rows:
            before = self.rows.get(row.key)
            if before is None or before.routing_view() != row.routing_view():
                routing = routing or before is not None or row.ready_replicas > 0
            self.rows[row.key] = row
        for key in removed:
            gone = self.rows.pop(key, None)
            routing = routing or (gone is not None and gone.ready_replicas > 0)
        self.publishes += int(routing)
        return routing


def engine(arch: str, trt: str = "10.3") -> D.EngineSpec:
    return D.EngineSpec(gpu_arch=arch, uri=f"https://artifacts.example/{arch}.plan", sha256=SHA, trt_version=trt)


def version(vid: int, label: str, *archs: str, warm: bool = False, precision: str = "fp16") -> D.VersionSpec:
    return D.VersionSpec(id=vid, label=label, precision=precision, trt_version="10.3", warm=warm,
                         engines=tuple(engine(a) for a in archs))


def pool(pid: int, name: str, arch: str, kind: str = "kubernetes", namespace: str | None = None) -> D.PoolSpec:
    return D.PoolSpec(id=pid, name=name, gpu_arch=arch, kind=kind, trt_version="10.3", namespace=namespace,
                      node_selector={"nvidia.com/gpu.product": name.upper()},
                      runtime_image="nvcr.io/nvidia/tritonserver:24.08-py3")


def traffic(default: str, *splits: tuple[str, float]) -> Policy:
    return Policy(default, tuple(D.Split(v, w) for v, w in splits))
