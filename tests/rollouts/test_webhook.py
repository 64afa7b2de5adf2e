"""Rollout events reach a webhook: retried when it fails, never holding up the caller."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from control_plane.app import create_app
from control_plane.rollouts import webhook as webhook_module
from control_plane.rollouts.webhook import Webhook
from control_plane.settings import Settings
from tests.control_plane.conftest import Api
from tests.services import LiveServer, free_port

TOKEN = "gr_webhook-test-admin-token-0123456789abcdef"


class Receiver:
    """A real HTTP endpoint that fails its first ``failures`` requests (503), or answers after ``delay``."""

    def __init__(self, failures: int = 0, delay: float = 0.0) -> None:
        self.port = free_port()
        self.failures = failures
        self.delay = delay
        self.attempts = 0
        self.events: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self._released = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _hook(self, request: web.Request) -> web.Response:
        self.attempts += 1
        if self.delay:
            try:
                await asyncio.wait_for(self._released.wait(), self.delay)
            except TimeoutError:
                pass
        if self.attempts <= self.failures:
            return web.Response(status=503)
        self.events.append(await request.json())
        return web.Response(status=204)

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        self._released.set()  # let a held answer go, so shutdown need not wait for it
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = await Receiver(failures=2).start()
    yield found
    await found.stop()


async def test_events_are_retried_in_order_without_blocking(receiver: Receiver,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webhook_module, "FIRST_BACKOFF_SECONDS", 0.05)
    hook = Webhook(receiver.url)
    began = time.perf_counter()
    for i in range(5):
        hook.send("rollout.step_advanced", rollout=1, step_index=i)
    assert time.perf_counter() - began < 0.01  # queued, not sent, by the caller
    deadline = time.monotonic() + 10
    while hook.delivered < 5:
        assert time.monotonic() < deadline, receiver.events
        await asyncio.sleep(0.02)
    assert [e["step_index"] for e in receiver.events] == [0, 1, 2, 3, 4]
    assert receiver.attempts == 7 and hook.delivered == 5 and hook.dropped == 0
    await hook.close()


async def test_a_dead_webhook_never_slows_the_api(tmp_path: Path) -> None:
    slow = await Receiver(delay=30).start()
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'grayroute.db'}", webhook_url=slow.url,
                        bootstrap_admin_token=TOKEN, rollout_controller=False, state_dir=tmp_path)
    server = LiveServer(create_app(settings)).start()
    api = Api(server.url, {role: TOKEN for role in ("admin", "publisher", "release-manager")})
    try:
        api.pool()
        api.model("m")
        api.version("m", "3", precision="fp32")
        api.version("m", "4")
        assert api.traffic("m", {"3": 100}, default="3").status_code == 200
        began = time.monotonic()
        started = api.post("/models/m/rollouts", json={"candidate": "4", "reason": "r",
                                                       "steps": [{"weight": 5}, {"weight": 100}]})
        paused = api.post("/models/m/rollouts/1/pause", json={"reason": "look"})
        assert (started.status_code, paused.status_code) == (201, 200)
        assert time.monotonic() - began < 5  # the receiver takes 30 s per event
        deadline = time.monotonic() + 10
        while slow.attempts < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    finally:
        api.close()
        server.stop()
        await slow.stop()


async def test_api_events_reach_the_webhook(tmp_path: Path, receiver: Receiver,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webhook_module, "FIRST_BACKOFF_SECONDS", 0.05)
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'grayroute.db'}", webhook_url=receiver.url,
                        bootstrap_admin_token=TOKEN, rollout_controller=False, state_dir=tmp_path)
    server = LiveServer(create_app(settings)).start()
    api = Api(server.url, {role: TOKEN for role in ("admin", "publisher", "release-manager")})
    try:
        api.pool()
        api.model("m")
        api.version("m", "3", precision="fp32")
        api.version("m", "4")
        assert api.traffic("m", {"3": 100}, default="3").status_code == 200
        assert api.post("/models/m/rollouts", json={"candidate": "4", "reason": "ship",
                                                    "steps": [{"weight": 5}, {"weight": 100}]}).status_code == 201
        assert api.post("/models/m/rollouts/1/abort", json={"reason": "stop"}).status_code == 200
        deadline = time.monotonic() + 10
        while len(receiver.events) < 2:
            assert time.monotonic() < deadline, receiver.events
            await asyncio.sleep(0.05)
        assert [(e["event"], e["state"], e["reason"]) for e in receiver.events] == \
            [("rollout.started", "running", "ship"), ("rollout.aborted", "aborted", "stop")]
        assert receiver.events[0]["model"] == "m" and receiver.events[0]["candidate"] == "4"
    finally:
        api.close()
        server.stop()
