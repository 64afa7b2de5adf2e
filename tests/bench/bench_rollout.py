"""Rollout benchmark: how soon a bad canary is rolled back, and how soon the routers serve the rollback.

    python tests/bench/bench_rollout.py [--rps 200] [--share 10] [--timeout 120] [--sim [--sim-runs 1000]]

Real parts on loopback: Postgres, Redis, the control plane (API and rollout
controller, ticking every 2 s), one router process (stats reported every 2 s),
local engine servers, and a load generator process sending ``--rps`` requests/s
with distinct user IDs. Each case starts a rollout whose first step gives the
candidate ``--share`` percent (pause 10 min, so only a failing verdict ends it)
with the analysis defaults (alpha 0.05, 200 requests a step, p99 ratio 1.25,
any proven error-rate increase):

    errors    the candidate's engine servers fail 5% of requests (--error-rate 0.05)
    latency   they answer late by the baseline's measured p99 (--extra-latency-ms), so its p99 doubles
    none      a clean candidate (the reference: it must not be rolled back within --timeout)

and measures, from the generator's and the router's clocks (one machine):

    onset -> verdict    the first response the candidate served -> the rollout's failing verdict
    verdict -> served   the verdict -> the router's /metrics shows the snapshot revision of the rollback
    verdict -> last     the verdict -> the last response the candidate served (in-flight ones included)

The reference for the propagation figure is a manual traffic PUT measured the
same way in the same run. ``--sim`` also prints the A/A and power table of
``tests/bench/sim_rollout_analysis.py`` (the judgement alone, simulated).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import queue
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from control_plane import migrate  # noqa: E402
from control_plane.app import create_app  # noqa: E402
from control_plane.settings import Settings  # noqa: E402
from tests.services import LiveServer, PostgresServer, RedisServer, free_port, wait_for_port  # noqa: E402

ADMIN = "gr_bench-admin-token-0123456789abcdefghijklmnop"
POOL = "bench-cpu"
BODY = {"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": [0.25] * 16}]}


# --- the load generator (its own process, so it never competes with the control plane's event loop) ------


def _generate(router: str, model: str, rps: float, events: Any, stop: Any) -> None:
    async def run() -> None:
        rng = random.Random()
        interval = 1 / rps
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=router, timeout=10, limits=limits) as client:
            async def one(user: str) -> None:
                try:
                    response = await client.post(f"/v2/models/{model}/infer", json=BODY, headers={"x-user-id": user})
                except httpx.HTTPError:
                    return
                events.put((time.time(), response.headers.get("x-grayroute-version", "")))

            tasks: set[asyncio.Task[None]] = set()
            next_at = time.monotonic()
            while not stop.is_set():
                task = asyncio.create_task(one(f"user-{rng.randrange(100_000)}"))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(run())


@dataclass
class Served:
    first: dict[str, float]
    last: dict[str, float]
    count: dict[str, int]


def _drain(events: Any, served: Served) -> None:
    while True:
        try:
            at, version = events.get_nowait()
        except queue.Empty:
            return
        served.first.setdefault(version, at)
        served.last[version] = at
        served.count[version] = served.count.get(version, 0) + 1


# --- the stack ----------------------------------------------------------------------------------------------


class Stack:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.processes: list[subprocess.Popen[bytes]] = []

    def engine(self, model: str, version: str, *faults: str) -> str:
        port = free_port()
        log = open(self.workdir / f"engine-{model}-{version}.log", "ab")  # noqa: SIM115 - handed to the child
        self.processes.append(subprocess.Popen(
            [sys.executable, "-m", "control_plane.reconciler.engine_server", "--model", model, "--version", version,
             "--port", str(port), "--model-dir", str(self.workdir / "models"), "--log-level", "warning", *faults],
            stdout=log, stderr=log, cwd=ROOT))
        wait_for_port(port, timeout=60)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/v2/models/{model}/versions/{version}/ready").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"engine {model}/{version} not ready")
            time.sleep(0.2)
        return url

    def router(self, control_plane: str, redis_url: str, token: str) -> str:
        port = free_port()
        log = open(self.workdir / "router.log", "ab")  # noqa: SIM115 - handed to the child
        env = {**os.environ, "GRAYROUTE_TOKEN": token, "GRAYROUTE_REDIS_URL": redis_url}
        self.processes.append(subprocess.Popen(
            [sys.executable, "-m", "control_plane.cli", "router", "--port", str(port), "--control-plane",
             control_plane, "--stats-interval", "2", "--snapshot-file", str(self.workdir / "snapshot.json")],
            stdout=log, stderr=log, env=env, cwd=ROOT))
        wait_for_port(port, timeout=60)
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


def _router_revision(router: str) -> int | None:
    text = httpx.get(f"{router}/metrics", timeout=5).text
    found = re.search(r"^grayroute_config_revision(?:\{[^}]*\})? (\d+(?:\.\d+)?)", text, re.M)
    return int(float(found.group(1))) if found else None


def _wait_revision(router: str, revision: int, timeout: float = 30) -> float:
    """The time the router first serves ``revision`` or later (polled every 10 ms)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        current = _router_revision(router)
        if current is not None and current >= revision:
            return time.time()
        time.sleep(0.01)
    raise RuntimeError(f"router never reached snapshot revision {revision}")


def _swapped_at(log: Path, revision: int) -> float | None:
    """When the router logged serving ``revision`` or later (its own clock, to the millisecond)."""
    for line in log.read_text().splitlines():
        found = re.match(r"(\S+ \S+) INFO grayroute\.router\.config: serving snapshot revision (\d+)", line)
        if found and int(found.group(2)) >= revision:
            return datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


def _snapshot_revision(api: httpx.Client, router_token: str) -> int:
    response = api.get("/snapshot", headers={"Authorization": f"Bearer {router_token}"})
    response.raise_for_status()
    return int(response.json()["revision"])


@dataclass
class Result:
    case: str
    outcome: str
    onset_to_verdict: float | None
    verdict_to_served: float | None
    verdict_to_last: float | None
    candidate_requests: int
    load_rps: float  # what the generator achieved during the rollout (the machine may not keep up with --rps)
    reason: str


@contextmanager
def _generator(router: str, model: str, rps: float) -> Iterator[tuple[Any, Any]]:
    context = multiprocessing.get_context("spawn")
    events, stop = context.Queue(), context.Event()
    process = context.Process(target=_generate, args=(router, model, rps, events, stop), daemon=True)
    process.start()
    try:
        yield events, stop
    finally:
        stop.set()
        process.join(timeout=15)
        if process.is_alive():
            process.kill()


def _baseline_p99(api: httpx.Client, model: str) -> float:
    """The baseline's p99 as the routers reported it (the figure the analysis compares against)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        stats = api.get(f"/models/{model}/stats", params={"window": 60}).json()
        found = [v for v in stats.get("versions", []) if v["version"] == "1" and v["p99_ms"]]
        if found and found[0]["requests"] >= 500:
            return float(found[0]["p99_ms"])
        time.sleep(1)
    raise RuntimeError(f"no baseline figures for {model}: {stats}")


def run_case(case: str, *, stack: Stack, api: httpx.Client, router: str, router_token: str, share: float,
             timeout: float, rps: float) -> Result:
    model = f"bench-{case}"
    baseline = stack.engine(model, "1")
    with _generator(router, model, rps) as (events, _stop):
        served = Served({}, {}, {})
        # The candidate's fault is fixed when its server starts, so measure the baseline first.
        response = api.post("/models", json={"name": model})
        assert response.status_code == 201, response.text
        _register(api, model, "1", baseline)
        response = api.put(f"/models/{model}/traffic", headers={"If-Match": '"0"'}, json={
            "default_version": "1", "reason": "bench", "splits": [{"version": "1", "weight": 100}]})
        assert response.status_code == 200, response.text
        time.sleep(12)  # warm-up: a few stats windows of the baseline alone
        _drain(events, served)
        faults = {"errors": ["--error-rate", "0.05"],
                  "latency": ["--extra-latency-ms", f"{_baseline_p99(api, model):.2f}"],
                  "none": []}[case]
        _register(api, model, "2", stack.engine(model, "2", *faults))
        response = api.post(f"/models/{model}/rollouts", json={
            "candidate": "2", "reason": f"bench: {case}",
            "steps": [{"weight": share, "pause_seconds": 600}, {"weight": 100}]})
        assert response.status_code == 201, response.text
        rollout_id = response.json()["id"]
        _drain(events, served)
        before, started = sum(served.count.values()), time.time()
        deadline = time.time() + timeout
        rollout: dict[str, Any] = {}
        while time.time() < deadline:
            _drain(events, served)
            rollout = api.get(f"/models/{model}/rollouts/{rollout_id}").json()
            if rollout["state"] != "running":
                break
            time.sleep(0.05)
        if rollout.get("state") != "rolled_back":
            api.post(f"/models/{model}/rollouts/{rollout_id}/abort", json={"reason": "bench over"})
            _drain(events, served)
            return Result(case, f"{rollout.get('state')} after {timeout:.0f} s", None, None, None,
                          served.count.get("2", 0), (sum(served.count.values()) - before) / (time.time() - started),
                          "")
        load = (sum(served.count.values()) - before) / (time.time() - started)
        rollback_revision = _snapshot_revision(api, router_token)
        served_at = _wait_revision(router, rollback_revision)
        time.sleep(3)  # in-flight candidate requests finish
        _drain(events, served)
        # The router's log is exact; the /metrics poll above is an upper bound (it starts after this
        # loop saw the rollback through the API).
        served_at = min(served_at, _swapped_at(stack.workdir / "router.log", rollback_revision) or served_at)
    fail = next(v for v in reversed(rollout["verdicts"]) if v["verdict"] == "fail")
    verdict_at = datetime.fromisoformat(fail["at"].replace("Z", "+00:00")).timestamp()
    return Result(case, "rolled back", verdict_at - served.first["2"], served_at - verdict_at,
                  served.last["2"] - verdict_at, served.count.get("2", 0), load, fail["reason"])


def _register(api: httpx.Client, model: str, version: str, url: str) -> None:
    response = api.post(f"/models/{model}/versions", json={
        "version": version, "precision": "fp32", "trt_version": "10.3",
        "engines": [{"gpu_arch": "sm_80", "uri": f"s3://bench/{model}/{version}.plan", "sha256": "ab" * 32,
                     "benchmark": {"p50_ms": 1.0, "p99_ms": 2.0}}]})
    assert response.status_code == 201, response.text
    response = api.put(f"/models/{model}/versions/{version}/endpoints", json={"pool": POOL, "urls": [url]})
    assert response.status_code == 200, response.text


def manual_put_reference(api: httpx.Client, router: str, router_token: str, stack: Stack) -> float:
    """A person's traffic PUT to the router serving it: the propagation the rollback rides on."""
    model = "bench-reference"
    response = api.post("/models", json={"name": model})
    assert response.status_code == 201, response.text
    _register(api, model, "1", stack.engine(model, "1"))
    samples = []
    for i in range(5):
        etag = api.get(f"/models/{model}/traffic").headers.get("etag", '"0"')
        started = time.time()
        response = api.put(f"/models/{model}/traffic", headers={"If-Match": etag}, json={
            "default_version": "1", "reason": f"reference {i}", "splits": [{"version": "1", "weight": 100}],
            "rules": [{"name": f"r{i}", "match": {"header": "x-tenant", "in": [f"t{i}"]}, "version": "1"}]})
        assert response.status_code == 200, response.text
        samples.append(_wait_revision(router, _snapshot_revision(api, router_token)) - started)
        time.sleep(0.5)
    return sorted(samples)[len(samples) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rps", type=float, default=200.0)
    parser.add_argument("--share", type=float, default=10.0, help="the candidate's percent in the first step")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a case may run")
    parser.add_argument("--cases", default="errors,latency,none")
    parser.add_argument("--sim", action="store_true", help="also print the simulated A/A and power table")
    parser.add_argument("--sim-runs", type=int, default=1000, help="simulated rollouts per row (default 1000)")
    args = parser.parse_args()

    print(f"# {platform.node()} · {os.cpu_count()} CPUs · Python {platform.python_version()} · "
          f"load {os.getloadavg()[0]:.1f} (a shared machine: figures move with the other work on it)")
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-rollout-{os.getpid()}"
    workdir.mkdir(parents=True)
    postgres, redis = PostgresServer.start(), RedisServer.start()
    stack = Stack(workdir)
    server: LiveServer | None = None
    try:
        migrate.upgrade(postgres.url)
        settings = Settings(database_url=postgres.url, redis_url=redis.url, secret_key="bench-secret-key-0123456789",
                            bootstrap_admin_token=ADMIN)
        server = LiveServer(create_app(settings)).start()
        api = httpx.Client(base_url=server.url + "/api/v1", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
        response = api.put(f"/pools/{POOL}", json={"gpu_arch": "sm_80", "kind": "external", "trt_version": "10.3",
                                                   "allowed_endpoints": ["127.0.0.1"]})
        assert response.status_code in (200, 201), response.text
        router_token = api.post("/tokens", json={"name": "bench-router", "role": "router"}).json()["token"]
        router = stack.router(server.url, redis.url, router_token)
        reference = manual_put_reference(api, router, router_token, stack)
        results = [run_case(case, stack=stack, api=api, router=router, router_token=router_token, share=args.share,
                            timeout=args.timeout, rps=args.rps) for case in args.cases.split(",")]
        api.close()
    finally:
        if server is not None:
            server.stop()
        stack.stop()
        redis.stop()
        postgres.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    def secs(value: float | None) -> str:
        return "–" if value is None else f"{value:6.2f} s"

    print(f"\nbad canary at {args.share:g}% of {args.rps:g} requests/s (targets: rolled back within 30 s of the "
          "onset; rollback served within 1 s of the verdict)")
    print(f"{'fault':<9} {'outcome':<22} {'onset→verdict':>14} {'verdict→served':>15} {'verdict→last':>13} "
          f"{'cand. req.':>10} {'load/s':>7}  reason")
    for r in results:
        print(f"{r.case:<9} {r.outcome:<22} {secs(r.onset_to_verdict):>14} {secs(r.verdict_to_served):>15} "
              f"{secs(r.verdict_to_last):>13} {r.candidate_requests:>10} {r.load_rps:>7.0f}  {r.reason[:90]}")
    print(f"reference: a manual traffic PUT → the router serves its revision: {reference * 1000:.0f} ms (median of 5)")
    print("verdict→last includes requests already in flight at the verdict and the router's snapshot swap.")
    if args.sim:
        print("\nsimulated judgement (tests/bench/sim_rollout_analysis.py):", flush=True)
        subprocess.run([sys.executable, str(ROOT / "tests" / "bench" / "sim_rollout_analysis.py"), "--runs",
                        str(args.sim_runs)], check=False, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


if __name__ == "__main__":
    main()
