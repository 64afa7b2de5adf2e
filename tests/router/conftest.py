"""Real pieces for router tests: KServe backends on loopback, a control-plane stand-in
that follows the snapshot contract, and router processes started on a port."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from router.routing import Range, allocate, bucket_counts
from tests.router.kserve import Behaviour, KServe
from tests.services import free_port

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "gr_router_test_token"


def model_spec(
    endpoints: dict[str, Sequence[str]],
    splits: Sequence[tuple[str, float]],
    *,
    previous: Sequence[Range] | None = None,
    default_version: str | None = None,
    rules: Sequence[dict[str, Any]] = (),
    anonymous: str = "weighted",
    salt: str = "resnet50",
    key_header: str = "x-user-id",
) -> dict[str, Any]:
    allocation = allocate(previous, bucket_counts(splits))
    return {
        "key_header": key_header,
        "salt": salt,
        "anonymous": anonymous,
        "default_version": default_version,
        "rules": list(rules),
        "splits": [{"version": v, "weight": w} for v, w in splits],
        "allocation": [list(r) for r in allocation],
        "versions": {
            v: {"endpoints": [{"url": u, "pool": "cpu", "gpu_arch": "sm_80"} for u in urls]}
            for v, urls in endpoints.items()
        },
    }


def snapshot(revision: int, **models: dict[str, Any]) -> bytes:
    return orjson.dumps({"revision": revision, "generated_at": "2026-11-22T00:00:00Z", "models": models})


class ControlPlaneStub:
    """Serves ``GET /api/v1/snapshot`` (Bearer, ETag = revision, 304) and takes stats reports."""

    def __init__(self) -> None:
        self.port = free_port()
        self.raw = b""
        self.revision = -1
        self.reports: list[dict[str, Any]] = []
        self.parity_reports: list[dict[str, Any]] = []
        self.fetches = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set(self, raw: bytes) -> None:
        self.raw = raw
        self.revision = orjson.loads(raw)["revision"]

    async def _snapshot(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": {"code": "unauthenticated", "message": "bad token", "details": None}},
                                     status=401)
        self.fetches += 1
        etag = f'"{self.revision}"'
        if request.headers.get("If-None-Match") == etag or not self.raw:
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(body=self.raw, content_type="application/json", headers={"ETag": etag})

    async def _report(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": {"code": "unauthenticated"}}, status=401)
        self.reports.append(await request.json())
        return web.json_response({"accepted": True}, status=202)

    async def _parity(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": {"code": "unauthenticated"}}, status=401)
        self.parity_reports.append(await request.json())
        return web.json_response({"windows": 1}, status=202)

    async def start(self) -> ControlPlaneStub:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/api/v1/snapshot", self._snapshot)
        app.router.add_post("/api/v1/stats/report", self._report)
        app.router.add_post("/api/v1/parity/report", self._parity)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class RouterProcess:
    """``python -m router`` on a free port, as an operator would start it."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.args = args
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GRAYROUTE_")}
        self.env.update(env or {})
        self.log = Path(tempfile.mkstemp(prefix="grayroute-router-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RouterProcess:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "router", "--port", str(self.port), "--log-level", "info", *self.args],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )
        return self

    async def wait_ready(self, revision: int | None = None, timeout: float = 15.0) -> int:
        """Until /v2/health/ready answers (with ``revision`` or newer, if given); returns the revision."""
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                assert self.process is not None and self.process.poll() is None, self.output()
                try:
                    async with session.get(self.url + "/v2/health/ready") as response:
                        if response.status == 200:
                            current = int((await response.json())["revision"])
                            if revision is None or current >= revision:
                                return current
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.02)
        raise TimeoutError(f"router not ready with revision {revision}: {self.output()[-3000:]}")

    async def revision(self) -> int | None:
        async with aiohttp.ClientSession() as session, session.get(self.url + "/v2/health/ready") as response:
            return int((await response.json())["revision"]) if response.status == 200 else None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@pytest.fixture
async def control_plane() -> AsyncIterator[ControlPlaneStub]:
    stub = await ControlPlaneStub().start()
    yield stub
    await stub.stop()


@pytest.fixture
def routers() -> Iterator[list[RouterProcess]]:
    """Collects every router a test starts, and stops them."""
    started: list[RouterProcess] = []
    yield started
    for router in started:
        router.stop()
        router.log.unlink(missing_ok=True)


@pytest.fixture
async def backends() -> AsyncIterator[dict[str, KServe]]:
    """Backends by name (``"3"``, ``"3b"``, …): ``await start_backend(backends, name, version)``."""
    started: dict[str, KServe] = {}
    yield started
    for server in started.values():
        await server.stop()


async def start_backend(backends: dict[str, KServe], name: str, version: str, **behaviour: Any) -> KServe:
    server = await KServe(free_port(), Behaviour(version, **behaviour)).start()
    backends[name] = server
    return server


async def publish(redis_url: str, raw: bytes) -> None:
    """What the control plane does on a change: store the document, announce the revision."""
    client = aioredis.from_url(redis_url)
    try:
        await client.set("grayroute:snapshot", raw)
        await client.publish("grayroute:snapshot", str(orjson.loads(raw)["revision"]))
    finally:
        await client.aclose()


async def infer(
    session: aiohttp.ClientSession, router: RouterProcess, user: str | None, *, model: str = "resnet50",
    version: str | None = None, headers: dict[str, str] | None = None,
) -> tuple[int, str | None, str | None]:
    """(status, x-grayroute-version, x-grayroute-route) of one JSON infer request."""
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    sent = dict(headers or {})
    if user is not None:
        sent["x-user-id"] = user
    async with session.post(router.url + path, json={"inputs": []}, headers=sent) as response:
        await response.read()
        return response.status, response.headers.get("x-grayroute-version"), response.headers.get("x-grayroute-route")


def router_env(redis_url: str | None = None) -> dict[str, str]:
    env = {"GRAYROUTE_TOKEN": TOKEN}
    if redis_url:
        env["GRAYROUTE_REDIS_URL"] = redis_url
    return env
