"""``grayroute demo``: everything on one machine, with a rollout judged live on generated traffic.

One process tree on the embedded defaults: this process serves the API and UI
(and the rollout controller inside it) and drives the demo; children run the
reconciler (local target: engine-server processes on loopback) and one router.
A generator sends requests with many user IDs through the router, so the
figures move and the rollout has evidence to judge. Scenarios:

    good         version 2 (fp16) is rolled out in steps and reaches 100%
    bad-canary   version 4 (fp8), whose engine servers fail 20% of requests and
                 answer 40 ms late (injected through GRAYROUTE_LOCAL_FAULTS), is
                 rolled back by the controller on its own
    manual       no rollout: start one from the UI, the API or the CLI

Ctrl-C stops everything in order; the SQLite file and tokens stay, so the next
run continues (a rollout that was running resumes at its step).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import os
import random
import signal
import sys
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import httpx
import uvicorn

log = logging.getLogger("grayroute.demo")

MODEL = "demo-classifier"
STABLE, CANDIDATE = "1", "2"
# A badly calibrated int8 rebuild, shadowed: the parity panel shows what fp16 and int8 cost in answers.
SHADOW, SHADOW_PERCENT = "3", 20
BROKEN = "4"  # the bad canary's candidate
POOL = "local-cpu"
SCENARIOS = {"good": CANDIDATE, "bad-canary": BROKEN, "manual": None}
# Version 4 is broken by construction: its engine servers fail this share of requests and answer late.
BROKEN_FAULTS = {"error_rate": 0.2, "extra_latency_ms": 40}
# Short pauses and a small evidence minimum so a rollout finishes in about two minutes at 40 requests/s;
# a real rollout keeps the defaults (200 requests a step) and pauses of minutes.
DEMO_STEPS = [{"weight": 10, "pause_seconds": 20}, {"weight": 25, "pause_seconds": 20},
              {"weight": 50, "pause_seconds": 20}, {"weight": 100, "pause_seconds": 0}]
DEMO_ANALYSIS = {"min_requests": 60}
# The broken candidate must not pass its first step by luck: at 60 requests, 8 or fewer failures (one run in
# five at a 20% error rate) are not yet proof against a clean baseline; at 150 they are, but for one run in
# thousands.
BROKEN_ANALYSIS = {"min_requests": 150}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, default=Path(".grayroute-demo"),
                        help="SQLite database, tokens, engine cache and logs (default ./.grayroute-demo)")
    parser.add_argument("--host", default="127.0.0.1", help="address for the UI/API and the router")
    parser.add_argument("--port", type=int, default=8080, help="UI and API port (default 8080)")
    parser.add_argument("--router-port", type=int, default=8000, help="router port (default 8000)")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="good",
                        help="good: version 2 is rolled out to 100%%; bad-canary: version 4, which fails 20%% of "
                             "requests, is rolled back by itself; manual: no rollout (default: good)")
    parser.add_argument("--rps", type=float, default=40.0, help="generated requests per second (0: none)")
    parser.add_argument("--users", type=int, default=10_000, help="distinct user IDs the generator uses")


def run(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    # Children inherit the embedded configuration through the environment.
    os.environ["GRAYROUTE_DATABASE_URL"] = f"sqlite+aiosqlite:///{data_dir / 'grayroute.db'}"
    os.environ["GRAYROUTE_STATE_DIR"] = str(data_dir / "state")
    os.environ.pop("GRAYROUTE_REDIS_URL", None)
    os.environ["GRAYROUTE_LOCAL_FAULTS"] = json.dumps({BROKEN: BROKEN_FAULTS})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("uvicorn.access", "httpx", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        asyncio.run(Demo(args, data_dir).run())
    except DemoError as exc:
        print(f"grayroute demo: {exc}", file=sys.stderr)
        return 1
    return 0


class DemoError(Exception):
    """The demo could not start; the message says why."""


def _die_with_parent() -> None:
    # Children must not outlive the demo even if it is killed outright (Linux).
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Demo:
    def __init__(self, args: argparse.Namespace, data_dir: Path) -> None:
        self.args = args
        self.data_dir = data_dir
        self.api_url = f"http://{args.host}:{args.port}"
        self.router_url = f"http://{args.host}:{args.router_port}"
        self.children: list[asyncio.subprocess.Process] = []
        self.stop = asyncio.Event()
        self.sent = self.failed = 0

    async def run(self) -> None:
        from control_plane.app import create_app
        from pydantic import SecretStr

        from control_plane.settings import Settings

        tokens = self._tokens()
        settings = Settings(bootstrap_admin_token=SecretStr(tokens["admin"]))
        server = _QuietSignalsServer(uvicorn.Config(create_app(settings), host=self.args.host, port=self.args.port,
                                                    log_level="warning"))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop.set)
        serving = asyncio.create_task(server.serve())
        try:
            await self._wait_started(server, serving)
            async with httpx.AsyncClient(base_url=self.api_url + "/api/v1", timeout=10,
                                         headers={"Authorization": f"Bearer {tokens['admin']}"}) as api:
                await self._ensure_router_token(api, tokens)
                await self._seed(api)
                await self._spawn("reconciler", "reconcile", "--target", "local", "--resync-seconds", "2",
                                  "--drain-seconds", "120")
                await self._spawn("router", "router", "--host", self.args.host, "--port", str(self.args.router_port),
                                  "--control-plane", self.api_url, "--snapshot-file",
                                  str(self.data_dir / "router-snapshot.json"), "--stats-interval", "2",
                                  env={"GRAYROUTE_TOKEN": tokens["router"]})
                await self._wait_ready(api)
                rollout = await self._start_rollout(api)
                self._banner(tokens["admin"], rollout)
                tasks = [asyncio.create_task(self._generate()), asyncio.create_task(self._report()),
                         asyncio.create_task(self._watch_rollouts(api))]
                await self.stop.wait()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            print("\nstopping: router, reconciler (and its engine servers), control plane …", flush=True)
            await self._stop_children()
            server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(serving, 15)
            print("stopped; the data stays in", self.data_dir, flush=True)

    # --- setup ------------------------------------------------------------------------------
    def _tokens(self) -> dict[str, str]:
        """Demo tokens, kept (0600) beside the database so a second run reuses them."""
        import secrets

        path = self.data_dir / "tokens.json"
        tokens: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
        if "admin" not in tokens:
            tokens["admin"] = "gr_" + secrets.token_urlsafe(32)
            self._save_tokens(tokens)
        return tokens

    def _save_tokens(self, tokens: dict[str, str]) -> None:
        path = self.data_dir / "tokens.json"
        path.write_text(json.dumps(tokens))
        path.chmod(0o600)

    async def _ensure_router_token(self, api: httpx.AsyncClient, tokens: dict[str, str]) -> None:
        if "router" in tokens:
            probe = await api.get("/snapshot", headers={"Authorization": f"Bearer {tokens['router']}"})
            if probe.status_code == 200:
                return
        response = await api.post("/tokens", json={"name": "demo-router", "role": "router"})
        response.raise_for_status()
        tokens["router"] = response.json()["token"]
        self._save_tokens(tokens)

    async def _wait_started(self, server: Any, serving: asyncio.Task[None]) -> None:
        deadline = time.monotonic() + 30
        while not server.started:
            if serving.done():
                serving.result()
                raise DemoError(f"the control plane could not listen on {self.api_url} (port in use?)")
            if time.monotonic() > deadline:
                raise DemoError("the control plane did not start within 30 s")
            await asyncio.sleep(0.05)

    async def _seed(self, api: httpx.AsyncClient) -> None:
        """The demo model, on first run only (later runs keep whatever the user changed); the broken version always."""
        if (await api.get(f"/models/{MODEL}")).status_code == 200:
            log.info("continuing with the existing %s", MODEL)
            await self._register(api, BROKEN, "fp8", 1.1)
            return
        log.info("registering %s with an fp32 stable, an fp16 candidate, a shadowed int8 rebuild and a broken fp8 "
                 "candidate", MODEL)
        steps: list[tuple[str, str, dict[str, Any]]] = [
            # priced so the version report shows what the candidate's engine would cost on such a GPU
            ("PUT", f"/pools/{POOL}", {"gpu_arch": "sm_80", "kind": "local", "trt_version": "10.3",
                                       "gpu_hourly_price": "2.50", "currency": "USD"}),
            ("POST", "/models", {"name": MODEL, "description": "4-class classifier (ONNX on CPU stands in for "
                                 "TensorRT)", "replicas": {POOL: 2}}),
        ]
        for method, path, body in steps:
            response = await api.request(method, path, json=body)
            if response.status_code >= 300:
                raise DemoError(f"seeding failed at {method} {path}: {response.text}")
        for version, precision, p50 in ((STABLE, "fp32", 2.1), (CANDIDATE, "fp16", 1.2), (SHADOW, "int8", 0.8),
                                        (BROKEN, "fp8", 1.1)):
            await self._register(api, version, precision, p50)
        response = await api.put(f"/models/{MODEL}/traffic", headers={"If-Match": '"0"'}, json={
            "default_version": STABLE, "reason": "demo: the fp32 engine serves everyone, int8 in shadow",
            "splits": [{"version": STABLE, "weight": 100}],
            "shadow": {"version": SHADOW, "percent": SHADOW_PERCENT}})
        if response.status_code != 200:
            raise DemoError(f"seeding the traffic policy failed: {response.text}")

    async def _register(self, api: httpx.AsyncClient, version: str, precision: str, p50: float) -> None:
        if (await api.get(f"/models/{MODEL}/versions/{version}")).status_code == 200:
            return
        notes = {STABLE: "stable", CANDIDATE: "candidate: half precision",
                 SHADOW: "int8 rebuild, calibrated on too narrow a sample (shadowed)",
                 BROKEN: "candidate: fp8, its calibration broke (the demo injects 20% errors and +40 ms)"}[version]
        response = await api.post(f"/models/{MODEL}/versions", json={
            "version": version, "precision": precision, "trt_version": "10.3", "notes": notes,
            # Never fetched: the local target serves a generated ONNX model in the engine's place.
            "engines": [{"gpu_arch": "sm_80", "uri": f"s3://demo-engines/{MODEL}/{version}/sm_80.plan",
                         "sha256": f"{int(version):064x}", "size_bytes": 24_000_000,
                         "benchmark": {"p50_ms": p50, "p99_ms": p50 * 1.8, "throughput": 1000 / p50,
                                       "gpu_mem_mb": {"fp32": 410, "fp16": 230}.get(precision, 130)}}]})
        if response.status_code != 201:
            raise DemoError(f"registering version {version} failed: {response.text}")

    async def _spawn(self, name: str, *command: str, env: dict[str, str] | None = None) -> None:
        log_path = self.data_dir / f"{name}.log"
        log_file = open(log_path, "ab")  # noqa: ASYNC230, SIM115 - a local log file handed to the child, once
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "control_plane.cli", *command, stdout=log_file, stderr=log_file,
            stdin=asyncio.subprocess.DEVNULL, env={**os.environ, **(env or {})},
            # Own process group: Ctrl-C reaches only this process, which stops children in order.
            start_new_session=True, preexec_fn=_die_with_parent,
        )
        log_file.close()
        self.children.append(process)
        log.info("started %s (pid %d, log %s)", name, process.pid, log_path)

    async def _wait_ready(self, api: httpx.AsyncClient) -> None:
        deadline = time.monotonic() + 120
        async with httpx.AsyncClient(timeout=2) as client:
            while time.monotonic() < deadline:
                if self.stop.is_set():
                    return
                for process in self.children:
                    if process.returncode is not None:
                        raise DemoError(f"a child exited with {process.returncode}; see the logs in {self.data_dir}")
                live = (await api.get(f"/models/{MODEL}/traffic")).json()
                serving = {live["default_version"], *(s["version"] for s in live["splits"] if s["weight"] > 0)}
                deployments = (await api.get(f"/models/{MODEL}/deployments")).json()
                ready = {d["version"] for d in deployments if d["ready_replicas"] > 0}
                shadow = live.get("shadow")
                serving |= {shadow["version"]} if shadow else set()
                if serving <= ready:
                    with contextlib.suppress(httpx.HTTPError):
                        # Ready only once the router itself reaches them (its snapshot has the endpoints).
                        answers = [await client.get(f"{self.router_url}/v2/models/{MODEL}/versions/{v}/ready")
                                   for v in sorted(serving)]
                        if all(a.status_code == 200 for a in answers):
                            return
                await asyncio.sleep(0.5)
        raise DemoError(f"engines or router not ready after 120 s; see the logs in {self.data_dir}")

    async def _start_rollout(self, api: httpx.AsyncClient) -> str:
        """The scenario's rollout, unless one is live already (it continues) or there is nothing to roll out."""
        candidate = SCENARIOS[self.args.scenario]
        rollouts = (await api.get(f"/models/{MODEL}/rollouts")).json()
        live = next((r for r in rollouts if r["state"] in ("running", "paused")), None)
        if live is not None:
            return f"rollout {live['id']} of version {live['candidate']} continues ({live['state']})"
        if candidate is None:
            return "none started (--scenario manual): start one from the UI's Rollout panel or the CLI"
        default = (await api.get(f"/models/{MODEL}/traffic")).json()["default_version"]
        if default == candidate:
            return f"none: version {candidate} already is the default"
        response = await api.post(f"/models/{MODEL}/rollouts", json={
            "candidate": candidate, "steps": DEMO_STEPS,
            "analysis": BROKEN_ANALYSIS if candidate == BROKEN else DEMO_ANALYSIS,
            "reason": f"demo ({self.args.scenario}): roll out version {candidate} in steps"})
        if response.status_code != 201:
            raise DemoError(f"starting the rollout failed: {response.text}")
        started = response.json()
        weights = " → ".join(f"{s['weight']:g}%" for s in started["steps"])
        outcome = "it should reach 100%" if candidate == CANDIDATE else "watch it roll back by itself"
        return f"rollout {started['id']} of version {candidate} against {started['baseline']}: {weights}; {outcome}"

    async def _watch_rollouts(self, api: httpx.AsyncClient) -> None:
        """One log line per change of a rollout's state or step, so the terminal tells the story too."""
        seen: dict[int, tuple[str, int]] = {}
        while True:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                for rollout in (await api.get(f"/models/{MODEL}/rollouts")).json()[:3]:
                    now = (rollout["state"], rollout["step_index"])
                    if seen.get(rollout["id"], now) != now:
                        steps = rollout["steps"]
                        where = (f"step {now[1] + 1} of {len(steps)} ({steps[now[1]]['weight']:g}%)"
                                 if now[1] < len(steps) else "done")
                        log.info("rollout %d (version %s): %s, %s %s", rollout["id"], rollout["candidate"],
                                 now[0].replace("_", " "), where, rollout.get("outcome") or "")
                    seen[rollout["id"]] = now
            await asyncio.sleep(2)

    def _banner(self, admin_token: str, rollout: str) -> None:
        print(f"""
grayroute demo is running
  UI and API   {self.api_url}/ui   (API docs: {self.api_url}/docs)
  router       {self.router_url}/v2/models/{MODEL}/infer
  admin token  {admin_token}
  try          curl -s -H 'x-user-id: alice' -H 'content-type: application/json' \\
                 -d '{{"inputs":[{{"name":"input","shape":[1,16],"datatype":"FP32","data":[{",".join(["0.5"] * 16)}]}}]}}' \\
                 -i {self.router_url}/v2/models/{MODEL}/infer
  traffic      {self.args.rps:g} requests/s from {self.args.users} users through the router
  rollout      {rollout}
               (watch it in the UI's Rollout panel: {self.api_url}/ui/models/{MODEL}#rollout)
  CLI          export GRAYROUTE_DATABASE_URL={os.environ["GRAYROUTE_DATABASE_URL"]}
               export GRAYROUTE_CONTROL_PLANE_URL={self.api_url} GRAYROUTE_TOKEN={admin_token}
               then e.g. `grayroute token list`, `grayroute register …` use this demo
Ctrl-C stops everything; run it again to continue where you left off.
""", flush=True)

    # --- traffic ----------------------------------------------------------------------------
    async def _generate(self) -> None:
        if self.args.rps <= 0:
            return
        rng = random.Random()
        interval = 1.0 / self.args.rps
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        async with httpx.AsyncClient(base_url=self.router_url, timeout=10, limits=limits) as client:
            in_flight: set[asyncio.Task[None]] = set()
            next_at = time.monotonic()
            while True:
                user = f"user-{rng.randrange(self.args.users)}"
                body = {"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32",
                                    "data": [round(rng.uniform(-1, 1), 3) for _ in range(16)]}]}
                task = asyncio.create_task(self._one(client, user, body))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def _one(self, client: httpx.AsyncClient, user: str, body: dict[str, Any]) -> None:
        try:
            response = await client.post(f"/v2/models/{MODEL}/infer", json=body, headers={"x-user-id": user})
            self.sent += 1
            self.failed += response.status_code >= 400
        except httpx.HTTPError:
            self.sent += 1
            self.failed += 1

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(30)
            log.info("generator: %d requests sent, %d failed", self.sent, self.failed)

    # --- shutdown ---------------------------------------------------------------------------
    async def _stop_children(self) -> None:
        # Router first (stop taking traffic), then the reconciler, which stops its engine servers.
        for process in reversed(self.children):
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), 20)
                except TimeoutError:
                    log.warning("pid %d did not stop in 20 s; killing its process group", process.pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    await process.wait()


class _QuietSignalsServer(uvicorn.Server):
    """uvicorn.Server that leaves signal handling to the demo (which must stop children first)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
