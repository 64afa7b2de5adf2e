"""The real pieces around a rollout: the control plane's database side, a local reconciler with engine
servers (faults injected per version), a router, users sending requests, and controllers."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from control_plane.db import create_engine, session_factory
from control_plane.parity import service as parity_service
from control_plane.reconciler import embedded, onnx_model
from control_plane.reconciler.engine_server import Fault
from control_plane.rollouts.controller import RolloutController
from control_plane.settings import Settings
from control_plane.stats.service import RedisStatsStore
from control_plane.traffic.publisher import SnapshotPublisher, notifier_for
from tests.control_plane.conftest import Api
from tests.router.conftest import RouterProcess

MODEL = "digits"
ROW = np.linspace(-1, 1, onnx_model.FEATURES, dtype=np.float32).tolist()
BODY = {"inputs": [{"name": "input", "shape": [1, onnx_model.FEATURES], "datatype": "FP32", "data": ROW}]}


async def until(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout} s: {what}")
        await asyncio.sleep(every)


class Stack:
    def __init__(self, settings: Settings, api: Api, state_dir: Path, faults: Mapping[str, Fault]) -> None:
        self.settings = settings
        self.api = api
        self.engine = create_engine(settings)
        self.sessions = session_factory(self.engine)
        self.notifier = notifier_for(settings.redis_url)
        self.publisher = SnapshotPublisher(self.sessions, self.notifier)
        self.store = RedisStatsStore(settings.redis_url or "", settings.stats_retention_seconds)
        # Where the control plane keeps what the router compared (the router reports to the API, Redis behind it).
        self.parity_store = parity_service.store_for(settings.redis_url, settings.stats_retention_seconds)
        self.reconciler = embedded.local_reconciler(sessions=self.sessions, publisher=self.publisher,
                                                    state_dir=state_dir, drain_seconds=1, resync_seconds=0.5,
                                                    faults=faults)
        self.router = RouterProcess("--control-plane", api.base_url, "--stats-interval", "0.5",
                                    env={"GRAYROUTE_TOKEN": api.tokens["router"],
                                         "GRAYROUTE_REDIS_URL": settings.redis_url or ""})
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self.controllers: dict[RolloutController, tuple[asyncio.Event, asyncio.Task[None]]] = {}
        self.answers: dict[int, int] = {}

    async def start(self) -> Stack:
        await self.notifier.start()
        self._tasks.append(asyncio.create_task(self.reconciler.run(self._stop)))
        self.router.start()
        await self.router.wait_ready()
        return self

    def controller(self, **options: Any) -> RolloutController:
        """A real controller, started now (as ``grayroute serve`` starts one)."""
        controller = RolloutController(sessions=self.sessions, publisher=self.publisher, store=self.store,
                                       parity_store=self.parity_store,
                                       tick_seconds=options.pop("tick_seconds", 0.3), **options)
        stop = asyncio.Event()
        self.controllers[controller] = (stop, asyncio.create_task(controller.run(stop)))
        return controller

    async def stop_controller(self, controller: RolloutController) -> None:
        stop, task = self.controllers.pop(controller)
        stop.set()
        await task

    async def ready(self, versions: set[str], pools: int = 1) -> None:
        """Until each version has ``pools`` ready deployments and the router reaches each version."""
        def deployed() -> bool:
            rows = self.api.get(f"/models/{MODEL}/deployments").json()
            ready = [d["version"] for d in rows if d["ready_replicas"] > 0]
            return all(ready.count(v) >= pools for v in versions)
        await until(deployed, 90, f"{versions} ready on {pools} pools", every=0.3)
        async with aiohttp.ClientSession() as http:
            for version in versions:
                async def answers(version: str = version) -> bool:
                    async with http.post(f"{self.router.url}/v2/models/{MODEL}/versions/{version}/infer",
                                         json=BODY) as response:
                        return response.status == 200
                await until(answers, 30, f"router reaches {version}", every=0.2)

    def send_load(self, concurrency: int = 8, *, varied: bool = False) -> None:
        """Users with random ids send requests through the router until the stack stops.

        ``varied``: each request a new input row (uniform in [-1, 1), as the demo's traffic), so
        output parity is measured over many inputs rather than one.
        """
        rng = np.random.default_rng(7)

        def body() -> dict[str, Any]:
            if not varied:
                return BODY
            row = rng.uniform(-1, 1, onnx_model.FEATURES).astype(np.float32).tolist()
            return {"inputs": [{**BODY["inputs"][0], "data": row}]}

        async def user_loop() -> None:
            async with aiohttp.ClientSession() as http:
                while not self._stop.is_set():
                    headers = {"x-user-id": f"user-{random.randrange(100_000)}"}
                    try:
                        async with http.post(f"{self.router.url}/v2/models/{MODEL}/infer", json=body(),
                                             headers=headers) as response:
                            await response.read()
                            self.answers[response.status] = self.answers.get(response.status, 0) + 1
                    except aiohttp.ClientError:
                        await asyncio.sleep(0.05)
        self._tasks.extend(asyncio.create_task(user_loop()) for _ in range(concurrency))

    async def close(self) -> None:
        for controller in list(self.controllers):
            await self.stop_controller(controller)
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.router.stop()
        self.router.log.unlink(missing_ok=True)
        await self.reconciler.target.close()
        await self.publisher.drain()
        await self.notifier.close()
        await self.store.close()
        await self.engine.dispose()


def seed(api: Api, *, pools: Mapping[str, str], candidate_archs: tuple[str, ...] | None = None) -> None:
    """Local pools {name: gpu_arch}, the model, a stable "3" (fp32) at 100% and a candidate "4" (fp16)."""
    for name, arch in pools.items():
        api.pool(name, gpu_arch=arch, kind="local")
    api.model(MODEL)
    archs = tuple(dict.fromkeys(pools.values()))
    api.version(MODEL, "3", archs=archs, precision="fp32")
    api.version(MODEL, "4", archs=candidate_archs or archs, precision="fp16")
    response = api.traffic(MODEL, {"3": 100}, default="3")
    assert response.status_code == 200, response.text
