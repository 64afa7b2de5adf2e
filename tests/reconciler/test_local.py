"""The local target: real engine-server processes answering KServe v2 inference on loopback."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from control_plane.reconciler import desired as D
from control_plane.reconciler import onnx_model
from control_plane.reconciler.loop import Backoff, Reconciler
from control_plane.deployments.models import Phase
from control_plane.reconciler.targets.local import LocalTarget
from tests.reconciler.conftest import MemoryStore, pool, traffic, version

CPU = pool(1, "cpu", "sm_80", kind="local")
K8S = pool(2, "a100", "sm_80", kind="kubernetes")
ROW = np.linspace(-1, 1, onnx_model.FEATURES, dtype=np.float32)


def inputs(*splits: tuple[str, float], warm: tuple[str, ...] = ()) -> D.Inputs:
    versions = (version(10, "v1", "sm_80", precision="fp32", warm="v1" in warm),
                version(11, "v2", "sm_80", precision="fp16", warm="v2" in warm))
    tr = traffic(splits[0][0], *splits) if splits else None
    return D.Inputs((D.ModelSpec(1, "digits", versions, tr),), (CPU, K8S))


async def _until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) is not alive either.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def infer(url: str, path: str, rows: np.ndarray) -> dict:
    body = {"inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32", "data": rows.tolist()}]}
    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        response = await http.post(f"{url}{path}", json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def test_local_target_starts_restarts_and_stops_engine_servers(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="control_plane.reconciler")
    store = MemoryStore(inputs(("v1", 90), ("v2", 10)))
    target = LocalTarget(state_dir=tmp_path)
    r = Reconciler(store=store, target=target, resync_seconds=30, drain_seconds=0.5,
                   backoff=Backoff(base=0.05, cap=0.5), debounce_seconds=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(r.run(stop))
    try:
        await _until(lambda: all(k in store.rows and store.rows[k].phase is Phase.READY for k in ((10, 1), (11, 1))))
        assert set(store.rows) == {(10, 1), (11, 1)}  # the kubernetes pool is not this target's
        assert store.publishes >= 1
        (v1_url,), (v2_url,) = store.rows[(10, 1)].endpoints, store.rows[(11, 1)].endpoints
        assert v1_url.startswith("http://127.0.0.1:")

        out1 = await infer(v1_url, "/v2/models/digits/versions/v1/infer", np.stack([ROW, -ROW]))
        out2 = await infer(v2_url, "/v2/models/digits/infer", np.stack([ROW, -ROW]))
        assert out1["model_version"] == "v1" and out2["model_version"] == "v2"
        p1 = np.array(out1["outputs"][0]["data"]).reshape(2, 4)
        p2 = np.array(out2["outputs"][0]["data"]).reshape(2, 4)
        assert np.allclose(p1.sum(axis=1), 1, atol=1e-5)
        assert np.allclose(p1, p2, atol=1e-2) and not np.array_equal(p1, p2)  # fp16 numerics differ slightly
        assert (tmp_path / "models").is_dir()  # the generated ONNX model is cached in the state dir

        # Kill v2's engine server: it comes back (on a new port) and is routable again.
        pid = target.pids()[f"{D.object_name('digits', 'v2', 'cpu')}/0"]
        os.kill(pid, signal.SIGKILL)
        await _until(lambda: store.rows[(11, 1)].endpoints != (v2_url,) and store.rows[(11, 1)].phase is Phase.READY)
        (new_url,) = store.rows[(11, 1)].endpoints
        assert target.pids()[f"{D.object_name('digits', 'v2', 'cpu')}/0"] != pid
        await infer(new_url, "/v2/models/digits/versions/v2/infer", ROW[None, :])

        # v2 leaves the traffic: it drains, then its process is stopped.
        v2_pid = target.pids()[f"{D.object_name('digits', 'v2', 'cpu')}/0"]
        store.inputs = inputs(("v1", 100))
        r.wake()
        await _until(lambda: (11, 1) in store.rows and store.rows[(11, 1)].phase is Phase.DRAINING)
        await asyncio.sleep(0.6)
        r.wake()
        await _until(lambda: (11, 1) not in store.rows)
        await _until(lambda: not _alive(v2_pid), timeout=10)
        pids = list(target.pids().values())
        assert len(pids) == 1
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await target.close()
    # Stopping the reconciler stops its processes.
    for p in pids:
        await _until(lambda p=p: not _alive(p), timeout=10)
    assert target.pids() == {}

    # What a person reads: one line per event, probes only at debug level.
    v2 = D.object_name("digits", "v2", "cpu")
    events = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    for expected in (f"deployment {v2} started", f"deployment {v2} ready", f"deployment {v2} draining",
                     f"deployment {v2} deleted", f"engine server {v2}/0 started", f"engine server {v2}/0 exited"):
        assert any(e.startswith(expected) for e in events), (expected, events)
    assert sum(e.startswith(f"deployment {v2} ready") for e in events) == 2  # first start, and after the kill
    assert not [e for e in events if "probe" in e]
    assert [r for r in caplog.records if r.levelno == logging.DEBUG and "probe of" in r.getMessage()]
    server_log = (tmp_path / "logs" / f"{v2}-0.log").read_text()
    assert "digits version v2 (fp16) ready on 127.0.0.1:" in server_log and "readiness probe" not in server_log


async def test_failed_probes_withdraw_a_server_with_one_line_and_bring_it_back(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="control_plane.reconciler")
    store = MemoryStore(inputs(("v1", 100)))
    target = LocalTarget(state_dir=tmp_path, probe_timeout=0.3)
    r = Reconciler(store=store, target=target, resync_seconds=0.2, drain_seconds=30,
                   backoff=Backoff(base=0.05, cap=0.5), debounce_seconds=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(r.run(stop))
    pid = 0
    try:
        await _until(lambda: (10, 1) in store.rows and store.rows[(10, 1)].phase is Phase.READY)
        pid = target.pids()[f"{D.object_name('digits', 'v1', 'cpu')}/0"]
        os.kill(pid, signal.SIGSTOP)  # hangs: every probe times out
        await _until(lambda: store.rows[(10, 1)].phase is not Phase.READY)
        os.kill(pid, signal.SIGCONT)
        await _until(lambda: store.rows[(10, 1)].phase is Phase.READY)
    finally:
        if pid:
            os.kill(pid, signal.SIGCONT)
        stop.set()
        await asyncio.wait_for(task, 20)
        await target.close()
    events = [r.getMessage() for r in caplog.records]
    withdrawn = [e for e in events if "failed 3 readiness probes in a row; withdrawn from routing" in e]
    assert len(withdrawn) == 1, events
    assert any("ready again after" in e for e in events), events
    name = D.object_name("digits", "v1", "cpu")
    assert any(e.startswith(f"deployment {name} not ready") for e in events), events


async def test_replicas_and_warm_versions_run_as_processes(tmp_path: Path) -> None:
    store = MemoryStore(inputs(warm=("v2",)))
    target = LocalTarget(state_dir=tmp_path)
    r = Reconciler(store=store, target=target)
    await target.start(r.wake)
    try:
        await r.reconcile_once()
        assert set(store.rows) == {(11, 1)}  # no traffic yet; only the warm version
        await _until(lambda: len(target.pids()) == 1)
        budget = replace_budget(inputs(("v1", 50), ("v2", 50)), {"cpu": 4})
        store.inputs = budget
        await r.reconcile_once()
        assert len(target.pids()) == 4  # 2 replicas each
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            await r.reconcile_once()
            if all(store.rows[k].phase is Phase.READY for k in ((10, 1), (11, 1))):
                break
            await asyncio.sleep(0.2)
        assert len(store.rows[(10, 1)].endpoints) == 2 and store.rows[(10, 1)].ready_replicas == 2
    finally:
        await target.close()


def replace_budget(i: D.Inputs, budget: dict[str, int]) -> D.Inputs:
    from dataclasses import replace

    return replace(i, models=tuple(replace(m, replicas=budget) for m in i.models))


@pytest.fixture
def engine_server(tmp_path: Path):
    """One engine server started directly, as the local target starts it."""
    import subprocess
    import sys

    from control_plane.reconciler.targets.local import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "control_plane.reconciler.engine_server", "--model", "digits", "--version", "v7",
         "--precision", "int8", "--port", str(port), "--model-dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1, trust_env=False).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


def test_engine_server_speaks_kserve_v2(engine_server: str) -> None:
    with httpx.Client(base_url=engine_server, timeout=10, trust_env=False) as http:
        assert http.get("/v2/health/live").status_code == 200
        assert http.get("/v2/health/ready").status_code == 200
        meta = http.get("/v2/models/digits").json()
        assert meta["versions"] == ["v7"] and meta["inputs"][0]["shape"] == [-1, 16]
        assert meta["parameters"]["variant"] == "int8"  # int8 runs its own statically quantized graph
        assert http.get("/v2/models/digits/versions/v7").status_code == 200
        assert http.get("/v2/models/digits/ready").json()["ready"] is True
        assert http.get("/v2/models/digits/versions/v7/ready").status_code == 200
        assert http.get("/v2/models/digits/versions/v8/ready").status_code == 404
        assert http.get("/v2/models/other/ready").status_code == 404

        flat = {"id": "req-1", "inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32",
                                           "data": ROW.tolist()}]}
        out = http.post("/v2/models/digits/versions/v7/infer", json=flat).json()
        assert out["id"] == "req-1" and out["model_name"] == "digits" and out["model_version"] == "v7"
        assert out["outputs"][0]["shape"] == [1, 4]
        assert abs(sum(out["outputs"][0]["data"]) - 1) < 1e-3

        bad_shape = {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
        assert http.post("/v2/models/digits/infer", json=bad_shape).status_code == 400
        assert http.post("/v2/models/digits/infer", content=b"not json").status_code == 400
        assert http.post("/v2/models/digits/infer", json={"inputs": []}).status_code == 400
        assert http.post("/v2/models/digits/versions/v8/infer", json=flat).status_code == 404


def test_onnx_variants_are_deterministic_and_differ_in_precision(tmp_path: Path) -> None:
    import onnxruntime as ort

    assert onnx_model.build("fp32") == onnx_model.build("fp32")
    batch = np.random.default_rng(1).standard_normal((8, 16)).astype(np.float32)
    outs = {}
    for variant in ("fp32", "fp16"):
        path = onnx_model.ensure(tmp_path, variant)
        assert onnx_model.ensure(tmp_path, variant) == path
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outs[variant] = session.run(None, {"input": batch})[0]
        assert outs[variant].shape == (8, 4) and outs[variant].dtype == np.float32
    assert np.allclose(outs["fp32"], outs["fp16"], atol=1e-2)
    assert not np.array_equal(outs["fp32"], outs["fp16"])
    assert (outs["fp32"].argmax(1) == outs["fp16"].argmax(1)).mean() >= 0.75


def test_engine_warms_up_with_a_request_shaped_like_its_inputs(tmp_path: Path) -> None:
    from control_plane.reconciler.engine_server import Engine

    engine = Engine(model="digits", version="v1", precision="fp16", model_dir=tmp_path)
    assert not engine.ready and engine.warmups == 0
    request = engine.warmup_request()
    declared = engine.metadata()["inputs"]
    assert [(t["name"], t["datatype"]) for t in request["inputs"]] == [(t["name"], t["datatype"]) for t in declared]
    assert request["inputs"][0]["shape"] == [1 if d == -1 else d for d in declared[0]["shape"]] == [1, 16]
    engine.warm_up()
    assert engine.ready and engine.warmups == 1


async def test_local_target_reports_ready_only_after_the_warm_up(tmp_path: Path) -> None:
    store = MemoryStore(inputs(("v1", 100)))
    target = LocalTarget(state_dir=tmp_path)
    r = Reconciler(store=store, target=target, resync_seconds=30, drain_seconds=5,
                   backoff=Backoff(base=0.05, cap=0.5), debounce_seconds=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(r.run(stop))
    try:
        await _until(lambda: (10, 1) in store.rows and store.rows[(10, 1)].phase is Phase.READY)
        # The engine server's log holds its warm-up, written before it answered ready.
        (log,) = (tmp_path / "logs").glob(f"{D.object_name('digits', 'v1', 'cpu')}-0.log")
        assert "warm-up inference (input FP32[1, 16])" in log.read_text()
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await target.close()
