"""Fault injection in the local engine server, per version and per version@pool, through the local target."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np

from control_plane.reconciler import desired as D
from control_plane.reconciler import onnx_model
from control_plane.reconciler.engine_server import Fault
from control_plane.reconciler.targets.local import LocalTarget
from tests.reconciler.conftest import pool, traffic, version

ROW = np.linspace(-1, 1, onnx_model.FEATURES, dtype=np.float32)
POOL_A = pool(1, "pool-a", "sm_80", kind="local")
POOL_B = pool(2, "pool-b", "sm_90", kind="local")


async def _answers(url: str, label: str, n: int) -> tuple[list[int], float]:
    body = {"inputs": [{"name": "input", "shape": [1, onnx_model.FEATURES], "datatype": "FP32",
                        "data": ROW.tolist()}]}
    statuses = []
    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        started = time.perf_counter()
        for _ in range(n):
            statuses.append((await http.post(f"{url}/v2/models/digits/versions/{label}/infer", json=body)).status_code)
        return statuses, (time.perf_counter() - started) / n


async def test_faults_follow_the_version_and_the_pool(tmp_path: Path) -> None:
    versions = (version(10, "v1", "sm_80", "sm_90", precision="fp32"), version(11, "v2", "sm_80", "sm_90"))
    model = D.ModelSpec(1, "digits", versions, traffic("v1", ("v1", 50), ("v2", 50)))
    plan = D.plan(D.Inputs((model,), (POOL_A, POOL_B)), kind="local", now=datetime.now(UTC),
                  drain=timedelta(seconds=60))
    target = LocalTarget(state_dir=tmp_path, faults={"v2": Fault(error_rate=1.0),
                                                     "v2@pool-b": Fault(extra_latency_ms=80)})
    try:
        deadline = time.monotonic() + 60
        while True:
            report = await target.sync(plan.deployments)
            if all(o.ready_replicas for o in report.observed.values()) and len(report.observed) == 4:
                break
            assert time.monotonic() < deadline, report
            await asyncio.sleep(0.2)
        url = {key: o.endpoints[0] for key, o in report.observed.items()}
        healthy, healthy_s = await _answers(url[(10, 1)], "v1", 20)
        failing, _ = await _answers(url[(11, 1)], "v2", 20)
        slow, slow_s = await _answers(url[(11, 2)], "v2", 5)
        assert healthy == [200] * 20
        assert failing == [500] * 20  # "v2" everywhere but where a version@pool fault is more specific
        assert slow == [200] * 5 and slow_s >= 0.08 > healthy_s
    finally:
        await target.close()
