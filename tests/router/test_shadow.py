"""Shadow traffic through real routers and real engine servers: the client is untouched, parity is right."""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
import pytest

from router.parity import ERROR_BOUNDS
from router.routing import bucket_of
from router.shadow import ShadowTarget
from tests.router.conftest import (
    ROOT,
    ControlPlaneStub,
    RouterProcess,
    model_spec,
    router_env,
    snapshot,
    start_backend,
)
from tests.services import free_port


def _shadowed(spec: dict[str, Any], version: str, percent: float) -> dict[str, Any]:
    return {**spec, "shadow": {"version": version, "percent": percent}}


async def _router(routers: list[RouterProcess], control_plane: ControlPlaneStub, raw: bytes,
                  *args: str) -> RouterProcess:
    control_plane.set(raw)
    router = RouterProcess("--control-plane", control_plane.url, "--stats-interval", "0.3", *args,
                           env=router_env()).start()
    routers.append(router)
    await router.wait_ready()
    return router


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


class EngineServer:
    """The local engine server (onnxruntime) for one precision, as the reconciler starts it."""

    def __init__(self, version: str, precision: str, model_dir: Path) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "control_plane.reconciler.engine_server", "--model", "resnet50",
             "--version", version, "--precision", precision, "--port", str(self.port), "--model-dir", str(model_dir)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait_ready(self, session: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                async with session.get(self.url + "/v2/health/ready") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise TimeoutError(f"engine server on {self.port} not ready")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[dict[str, EngineServer]]:
    started = {"3": EngineServer("3", "fp32", tmp_path), "4": EngineServer("4", "fp16", tmp_path)}
    yield started
    for engine in started.values():
        engine.stop()


def _request(rows: np.ndarray, binary: bool = False) -> bytes:
    body: dict[str, Any] = {"inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32",
                                        "data": rows.reshape(-1).tolist()}]}
    if binary:
        body["outputs"] = [{"name": "probabilities", "parameters": {"binary_data": True}}]
    return orjson.dumps(body)


async def _post(session: aiohttp.ClientSession, url: str, body: bytes, user: str | None = None
                ) -> tuple[int, bytes, dict[str, str]]:
    headers = {"content-type": "application/json"}
    if user is not None:
        headers["x-user-id"] = user
    async with session.post(url + "/v2/models/resnet50/infer", data=body, headers=headers) as response:
        return response.status, await response.read(), {k.lower(): v for k, v in response.headers.items()}


async def _parity_windows(control_plane: ControlPlaneStub, until: Any, timeout: float = 20.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        windows = [w for r in control_plane.parity_reports for w in r["windows"]]
        if windows and until(windows):
            return windows
        await asyncio.sleep(0.1)
    raise AssertionError(f"parity reports never got there: {control_plane.parity_reports}")


def _probabilities(body: bytes, headers: dict[str, str]) -> np.ndarray:
    """The test's own reading of the engine's answer (not the router's decoder)."""
    length = headers.get("inference-header-content-length")
    if length is None:
        return np.array(orjson.loads(body)["outputs"][0]["data"], dtype=np.float64).reshape(-1, 4)
    return np.frombuffer(body[int(length):], dtype="<f4").astype(np.float64).reshape(-1, 4)


def _total(windows: list[dict[str, Any]], field: str) -> int:
    return sum(w[field] for w in windows)


# --- sampling ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("percent", [5.0, 12.34, 0.5])
def test_the_sampled_share_is_the_percent_and_the_same_users_each_time(percent: float) -> None:
    keys = [f"user-{i}" for i in range(20_000)]
    target = ShadowTarget("resnet50", "4", percent)
    first = {k for k in keys if target.sampled(k)}
    share = 100 * len(first) / len(keys)
    assert abs(share - percent) <= 0.5, share
    assert first == {k for k in keys if ShadowTarget("resnet50", "4", percent).sampled(k)}  # same users
    # the spec's hash with the shadow salt, not the split's buckets (else shadowed users = canary users)
    assert first == {k for k in keys if bucket_of("resnet50\x1fshadow", k) < round(percent * 100)}
    split_low = {k for k in keys if bucket_of("resnet50", k) < round(percent * 100)}
    assert len(first & split_low) < len(first) / 2
    anonymous = sum(target.sampled(None) for _ in range(20_000)) / 200
    assert abs(anonymous - percent) <= 1.0, anonymous


# --- parity against the test's own numpy --------------------------------------------------------------

@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
async def test_fp16_shadow_parity_equals_numpy_on_the_same_tensors(
        engines: dict[str, EngineServer], control_plane: ControlPlaneStub, routers: list,
        session: aiohttp.ClientSession, binary: bool, tmp_path: Path) -> None:
    for engine in engines.values():
        await engine.wait_ready(session)
    spec = model_spec({"3": [engines["3"].url], "4": [engines["4"].url]}, [("3", 100), ("4", 0)],
                      default_version="3")
    router = await _router(routers, control_plane, snapshot(1, resnet50=_shadowed(spec, "4", 100)))
    rng = np.random.default_rng(7)
    # scaled inputs make the fp16 graph disagree on some rows, so agreement is not trivially 1
    batches = [rng.normal(0, 4, size=(int(rng.integers(1, 9)), 16)).astype(np.float32) for _ in range(40)]

    expected_max = 0.0
    agree = rows = 0
    sum_abs = 0.0
    elements = 0
    histogram = [0] * (len(ERROR_BOUNDS) + 1)
    for i, batch in enumerate(batches):
        body = _request(batch, binary)
        status, through_router, headers = await _post(session, router.url, body, f"user-{i}")
        _, direct_primary, primary_headers = await _post(session, engines["3"].url, body)
        _, direct_shadow, shadow_headers = await _post(session, engines["4"].url, body)
        assert status == 200 and through_router == direct_primary  # the client gets the primary, byte for byte
        assert headers["x-grayroute-version"] == "3"
        assert ("inference-header-content-length" in headers) == binary  # binary tensors really were compared
        a = _probabilities(direct_primary, primary_headers)
        b = _probabilities(direct_shadow, shadow_headers)
        assert a.shape == (len(batch), 4)
        diff = np.abs(a - b)
        expected_max = max(expected_max, float(diff.max()))
        sum_abs += float(diff.sum())
        elements += diff.size
        agree += int((a.argmax(1) == b.argmax(1)).sum())
        rows += a.shape[0]
        histogram[int(np.searchsorted(ERROR_BOUNDS, diff.max()))] += 1
    assert expected_max > 0  # fp16 really differs: the comparison below is not 0 == 0

    windows = await _parity_windows(control_plane, lambda ws: _total(ws, "compared") >= len(batches))
    assert all(w["shadow_version"] == "4" and w["primary_version"] == "3" and w["primary_gpu_arch"] == "sm_80"
               and w["shadow_gpu_arch"] == "sm_80" for w in windows)
    assert _total(windows, "compared") == _total(windows, "mirrored") == len(batches)
    assert _total(windows, "dropped") == _total(windows, "errors") == 0
    outputs = [w["outputs"]["probabilities"] for w in windows if "probabilities" in w["outputs"]]
    assert max(o["max_abs_error"] for o in outputs) == pytest.approx(expected_max, rel=1e-12)
    assert sum(o["top1_agree"] for o in outputs) == agree
    assert sum(o["top1_rows"] for o in outputs) == rows
    assert sum(o["elements"] for o in outputs) == elements
    assert sum(o["sum_abs_error"] for o in outputs) == pytest.approx(sum_abs, rel=1e-9)
    assert [sum(col) for col in zip(*(o["max_abs_histogram"] for o in outputs), strict=True)] == histogram
    assert sum(o["shape_mismatch"] + o["dtype_mismatch"] + o["missing"] for o in outputs) == 0

    # the same requests through a router without a shadow: identical answers, nothing mirrored
    file = tmp_path / "plain.json"
    file.write_bytes(snapshot(1, resnet50=spec))
    plain = RouterProcess("--snapshot-file", str(file), env=router_env()).start()
    routers.append(plain)
    await plain.wait_ready()
    for i, batch in enumerate(batches[:10]):
        body = _request(batch, binary)
        _, with_shadow, _ = await _post(session, router.url, body, f"user-{i}")
        _, without, _ = await _post(session, plain.url, body, f"user-{i}")
        assert with_shadow == without


# --- shape and datatype mismatches --------------------------------------------------------------------

async def test_shape_dtype_and_missing_outputs_are_counted(backends: dict, control_plane: ControlPlaneStub,
                                                           routers: list, session: aiohttp.ClientSession) -> None:
    primary = await start_backend(backends, "3", "3")
    answers = {
        "shape": b'{"outputs":[{"name":"y","datatype":"FP32","shape":[2],"data":[1.0,1.0]}]}',
        "dtype": b'{"outputs":[{"name":"y","datatype":"FP64","shape":[1],"data":[1.0]}]}',
        "missing": b'{"outputs":[{"name":"z","datatype":"FP32","shape":[1],"data":[1.0]}]}',
        "same": b'{"outputs":[{"name":"y","datatype":"FP32","shape":[1],"data":[1.5]}]}',
    }
    for name, answer in answers.items():
        await start_backend(backends, name, name, infer_body=answer)
    models = {f"m{name}": _shadowed(model_spec({"3": [primary.url], name: [backends[name].url]},
                                               [("3", 100), (name, 0)], default_version="3"), name, 100)
              for name in answers}
    router = await _router(routers, control_plane, snapshot(1, **models))
    for name in answers:
        for i in range(5):
            async with session.post(router.url + f"/v2/models/m{name}/infer", json={"inputs": []},
                                    headers={"x-user-id": f"u{i}"}) as response:
                assert response.status == 200
    windows = await _parity_windows(control_plane, lambda ws: _total(ws, "compared") >= 20)
    by_model: dict[str, dict[str, int]] = {}
    for w in windows:
        cell = by_model.setdefault(w["model"], {})
        for field, value in w["outputs"]["y"].items():
            if field not in ("max_abs_histogram", "max_abs_error"):
                cell[field] = cell.get(field, 0) + value
    assert by_model["mshape"]["shape_mismatch"] == 5 and by_model["mshape"]["compared"] == 0
    assert by_model["mdtype"]["dtype_mismatch"] == 5 and by_model["mdtype"]["compared"] == 0
    assert by_model["mmissing"]["missing"] == 5
    assert by_model["msame"]["compared"] == 5 and by_model["msame"]["sum_abs_error"] == pytest.approx(2.5)
    async with session.get(router.url + "/metrics") as response:
        text = await response.text()
    assert 'model="mshape",shadow_version="shape",primary_version="3"' in text
    assert 'outcome="mismatched"} 5' in text


# --- the client never pays for the shadow -------------------------------------------------------------

async def _latencies(session: aiohttp.ClientSession, url: str, model: str, n: int, concurrency: int
                     ) -> tuple[list[float], list[bytes]]:
    latencies: list[float] = []
    bodies: list[bytes] = []
    queue = list(range(n))

    async def worker() -> None:
        while queue:
            i = queue.pop()
            started = time.perf_counter()
            async with session.post(url + f"/v2/models/{model}/infer", json={"inputs": []},
                                    headers={"x-user-id": f"user-{i}"}) as response:
                body = await response.read()
                assert response.status == 200, body
            latencies.append(time.perf_counter() - started)
            bodies.append(body)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, bodies


@pytest.mark.parametrize("shadow_state", ["slow", "dead"])
async def test_a_slow_or_dead_shadow_costs_the_client_nothing(
        backends: dict, control_plane: ControlPlaneStub, routers: list, session: aiohttp.ClientSession,
        shadow_state: str) -> None:
    primary = await start_backend(backends, "3", "3")
    shadow = await start_backend(backends, "4", "4", delay=10.0 if shadow_state == "slow" else 0.0)
    if shadow_state == "dead":
        await shadow.stop()
    spec = model_spec({"3": [primary.url], "4": [shadow.url]}, [("3", 100), ("4", 0)], default_version="3")
    router = await _router(routers, control_plane,
                           snapshot(1, shadowed=_shadowed(spec, "4", 100), plain=spec),
                           "--shadow-max-inflight", "16", "--shadow-timeout", "30")
    await _latencies(session, router.url, "plain", 50, 8)  # warm connections
    # interleaved rounds, so load from the rest of the machine hits both alike
    plain: list[float] = []
    shadowed: list[float] = []
    began = time.monotonic()
    for _ in range(3):
        lat, plain_bodies = await _latencies(session, router.url, "plain", 300, 16)
        plain += lat
        lat, shadow_bodies = await _latencies(session, router.url, "shadowed", 300, 16)
        shadowed += lat
        assert sorted(shadow_bodies) == sorted(plain_bodies)  # same answers, no errors (asserted per request)
    p50_plain, p50_shadow = statistics.median(plain), statistics.median(shadowed)
    assert p50_shadow <= p50_plain * 1.5 + 0.002, (p50_plain, p50_shadow)
    assert max(shadowed) < 2.0  # nobody waited for a 10 s shadow

    def outcome(windows: list[dict[str, Any]], what: str) -> int:
        return sum(w[what] for w in windows if w["model"] == "shadowed")

    elapsed = time.monotonic() - began
    windows = await _parity_windows(
        control_plane, lambda ws: outcome(ws, "mirrored") + outcome(ws, "dropped") >= 900)
    assert outcome(windows, "mirrored") + outcome(windows, "dropped") == 900
    if shadow_state == "slow":
        # 16 mirrors sit on the slow backend for 10 s each; every other request is dropped at once
        # (a mirror that failed early, e.g. refused under the machine's load, frees its place sooner)
        held = outcome(windows, "mirrored") - outcome(windows, "errors")
        assert outcome(windows, "mirrored") >= 16 and held <= 16 * (1 + int(elapsed // 10)), (elapsed, windows)
        assert outcome(windows, "dropped") >= 900 - 16 * (1 + int(elapsed // 10)) - outcome(windows, "errors")
    else:
        # the dead backend is refused fast: each mirror is an error, none surfaces
        windows = await _parity_windows(
            control_plane, lambda ws: outcome(ws, "errors") + outcome(ws, "dropped") >= 900)
        assert outcome(windows, "errors") > 0 and outcome(windows, "compared") == 0
    async with session.get(router.url + "/metrics") as response:
        assert "grayroute_shadow_total" in await response.text()
    # shadow failures never eject: the primary keeps its backends, the shadow version is not marked failed
    async with session.get(router.url + "/v2/health/ready") as response:
        assert response.status == 200


# --- a badly calibrated int8 engine is caught ---------------------------------------------------------

@pytest.fixture
def three_engines(tmp_path: Path) -> Iterator[dict[str, EngineServer]]:
    started = {"3": EngineServer("3", "fp32", tmp_path), "4": EngineServer("4", "fp16", tmp_path),
               "5": EngineServer("5", "int8", tmp_path)}
    yield started
    for engine in started.values():
        engine.stop()


async def test_int8_engine_agrees_less_than_fp16_and_the_shadow_parity_shows_it(
        three_engines: dict[str, EngineServer], control_plane: ControlPlaneStub, routers: list,
        session: aiohttp.ClientSession) -> None:
    engines = three_engines
    for engine in engines.values():
        await engine.wait_ready(session)
    for version, variant in (("3", "fp32"), ("4", "fp16"), ("5", "int8")):
        async with session.get(engines[version].url + "/v2/models/resnet50") as response:
            assert (await response.json())["parameters"]["variant"] == variant
    spec = model_spec({v: [e.url] for v, e in engines.items()}, [("3", 100), ("4", 0), ("5", 0)],
                      default_version="3")
    router = await _router(routers, control_plane, snapshot(1, resnet50=_shadowed(spec, "5", 100)))
    rng = np.random.default_rng(11)
    # the demo's traffic: features uniform in [-1, 1]
    batches = [rng.uniform(-1, 1, size=(16, 16)).astype(np.float32) for _ in range(25)]
    answers: dict[str, list[np.ndarray]] = {v: [] for v in engines}
    for i, batch in enumerate(batches):
        body = _request(batch)
        status, _, _ = await _post(session, router.url, body, f"user-{i}")
        assert status == 200
        for version, engine in engines.items():
            _, direct, headers = await _post(session, engine.url, body)
            answers[version].append(_probabilities(direct, headers))
    fp32, fp16, int8 = (np.concatenate(answers[v]) for v in ("3", "4", "5"))
    agree_fp16 = float((fp32.argmax(1) == fp16.argmax(1)).mean())
    agree_int8 = float((fp32.argmax(1) == int8.argmax(1)).mean())
    max_fp16, max_int8 = float(np.abs(fp32 - fp16).max()), float(np.abs(fp32 - int8).max())
    assert agree_fp16 >= 0.99 and 0 < max_fp16 < 0.01, (agree_fp16, max_fp16)  # small, real fp16 differences
    assert agree_int8 <= agree_fp16 - 0.05 and max_int8 > 0.1, (agree_int8, max_int8)  # a visible int8 problem

    # the router's parity for the int8 shadow is the same numbers
    windows = await _parity_windows(control_plane, lambda ws: _total(ws, "compared") >= len(batches))
    outputs = [w["outputs"]["probabilities"] for w in windows if "probabilities" in w["outputs"]]
    assert sum(o["top1_rows"] for o in outputs) == fp32.shape[0]
    assert sum(o["top1_agree"] for o in outputs) / fp32.shape[0] == pytest.approx(agree_int8, abs=1e-12)
    assert max(o["max_abs_error"] for o in outputs) == pytest.approx(max_int8, rel=1e-6)


def test_the_int8_variant_is_built_once_and_the_same_every_time(tmp_path: Path) -> None:
    from control_plane.reconciler import onnx_model

    first = onnx_model.build("int8")
    assert first == onnx_model.build("int8")  # calibration is deterministic
    path = onnx_model.ensure(tmp_path, "int8")
    assert path.read_bytes() == first
    assert onnx_model.ensure(tmp_path, "int8") == path and len(list(tmp_path.iterdir())) == 1
    assert onnx_model.variant_for("INT8") == "int8" and onnx_model.variant_for("bf16") == "fp16"


async def test_a_shadow_answer_over_the_byte_limit_is_cut_off_and_counted(
        backends: dict, control_plane: ControlPlaneStub, routers: list, session: aiohttp.ClientSession) -> None:
    primary = await start_backend(backends, "3", "3")
    huge = b'{"outputs":[{"name":"y","datatype":"FP32","shape":[1],"data":[1.0]}],"pad":"' + b"x" * 300_000 + b'"}'
    await start_backend(backends, "4", "4", infer_body=huge)
    spec = model_spec({"3": [primary.url], "4": [backends["4"].url]}, [("3", 100), ("4", 0)], default_version="3")
    router = await _router(routers, control_plane, snapshot(1, resnet50=_shadowed(spec, "4", 100)),
                           "--shadow-max-bytes", "65536")
    for i in range(20):
        async with session.post(router.url + "/v2/models/resnet50/infer", json={"inputs": []},
                                headers={"x-user-id": f"u{i}"}) as response:
            assert response.status == 200 and b"pad" not in await response.read()
    windows = await _parity_windows(control_plane, lambda ws: _total(ws, "errors") >= 20)
    assert _total(windows, "errors") == _total(windows, "mirrored") == 20 and _total(windows, "compared") == 0
    # the version itself still serves answers of that size to its own clients (the limit is the mirror's)
    async with session.post(router.url + "/v2/models/resnet50/versions/4/infer", json={"inputs": []}) as response:
        assert response.status == 200 and len(await response.read()) == len(huge)


async def _all_shadowed_pair(backends: dict) -> dict[str, Any]:
    """Version 3 serves everyone; version 4, shadowing it, answers y = 1.25 (an error of 0.25 each)."""
    primary = await start_backend(backends, "3", "3")
    await start_backend(backends, "4", "4", infer_body=b'{"outputs":[{"name":"y","datatype":"FP32","shape":[1],'
                                                        b'"data":[1.25]}]}')
    return model_spec({"3": [primary.url], "4": [backends["4"].url]}, [("3", 100), ("4", 0)], default_version="3")


async def test_parity_windows_wait_while_nothing_takes_them_and_none_is_lost(
        backends: dict, control_plane: ControlPlaneStub, routers: list, session: aiohttp.ClientSession) -> None:
    spec = await _all_shadowed_pair(backends)
    router = await _router(routers, control_plane, snapshot(1, resnet50=_shadowed(spec, "4", 100)))
    await control_plane.stop()  # and no Redis: nothing takes a window
    n = 0
    for _ in range(3):  # three windows' worth (0.3 s each)
        for _ in range(10):
            async with session.post(router.url + "/v2/models/resnet50/infer", json={"inputs": []},
                                    headers={"x-user-id": f"u{n}"}) as response:
                assert response.status == 200
            n += 1
        await asyncio.sleep(0.4)
    assert control_plane.parity_reports == []
    await control_plane.start()  # back: the spooled windows go out, oldest first
    windows = await _parity_windows(control_plane, lambda ws: _total(ws, "compared") >= n)
    assert _total(windows, "compared") == _total(windows, "mirrored") == n
    ends = [r["window_end"] for r in control_plane.parity_reports]
    assert len(ends) >= 3 and ends == sorted(ends)


# --- several worker processes -------------------------------------------------------------------------

async def _until_every_worker_is_ready(router, workers: int, timeout: float = 30.0) -> None:
    """Fresh connections until ``workers`` distinct processes have answered ready: a worker that has not bound its
    socket yet takes no connections, so a burst sent before then would all land on the others."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < workers:
        assert time.monotonic() < deadline, f"only {sorted(seen)} ready: {router.output()[-3000:]}"
        async with aiohttp.ClientSession() as fresh:
            try:
                async with fresh.get(router.url + "/v2/health/ready") as response:
                    if response.status == 200:
                        seen.add((await response.json())["router"])
            except aiohttp.ClientError:
                pass
        await asyncio.sleep(0.02)


async def test_parity_counts_are_whole_with_several_router_workers(
        backends: dict, control_plane: ControlPlaneStub, routers: list, session: aiohttp.ClientSession) -> None:
    spec = await _all_shadowed_pair(backends)
    router = await _router(routers, control_plane, snapshot(1, resnet50=_shadowed(spec, "4", 100)), "--workers", "2")
    await _until_every_worker_is_ready(router, workers=2)
    n = 60
    room = asyncio.Semaphore(8)  # a concurrent burst the busy test machine's backend pool can take

    async def one(i: int) -> None:
        async with room, aiohttp.ClientSession() as fresh:  # fresh connections, so both workers take some
            async with fresh.post(router.url + "/v2/models/resnet50/infer", json={"inputs": []},
                                  headers={"x-user-id": f"u{i}"}) as response:
                assert response.status == 200, await response.text()

    await asyncio.gather(*(one(i) for i in range(n)))
    windows = await _parity_windows(control_plane, lambda ws: _total(ws, "compared") >= n)
    assert _total(windows, "compared") == _total(windows, "mirrored") == n
    assert len({r["router"] for r in control_plane.parity_reports}) == 2  # each worker reported its own share
    assert sum(w["outputs"]["y"]["sum_abs_error"] for w in windows) == pytest.approx(0.25 * n)
    line = ""
    for _ in range(50):  # workers share their totals every second
        async with session.get(router.url + "/metrics") as response:
            text = await response.text()
        line = next((row for row in text.splitlines()
                     if row.startswith("grayroute_shadow_total{") and 'outcome="compared"' in row), "")
        if line.endswith(f" {n}"):
            break
        await asyncio.sleep(0.2)
    assert line.endswith(f" {n}"), line  # /metrics sums every worker's counters, whichever worker answers
