"""The UI against a real server: Postgres (a database of its own), Redis, uvicorn, headless Chromium.

The web tests keep to their own database and their own Redis so they never see
or disturb the API tests' rows, snapshot key or pub/sub channel. Every test
seeds its own model through the real API, so tests need no cleanup.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from control_plane import migrate
from control_plane.app import create_app
from control_plane.settings import Settings
from router.stats import LATENCY_BOUNDS_MS
from tests.services import LiveServer, RedisServer

ADMIN_TOKEN = "gr_web-test-admin-token-0123456789abcdefghijkl"
SECRET_KEY = "web-test-secret-key-0123456789abcdef"
DATABASE = "grayroute_web"
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("GRAYROUTE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 860}  # a laptop screen


def run_async(coroutine: Any) -> Any:
    """Run a coroutine to completion from sync code, even while Playwright's loop runs in this thread."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _own_database(postgres_url: str) -> str:
    """A fresh database beside the shared one, so the API tests' truncations never hit ours."""
    import asyncpg

    base = postgres_url.replace("postgresql+asyncpg://", "postgresql://")

    async def create() -> None:
        connection = await asyncpg.connect(base)
        try:
            await connection.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
            await connection.execute(f"CREATE DATABASE {DATABASE}")
        finally:
            await connection.close()

    run_async(create())
    return re.sub(r"/[^/]+$", f"/{DATABASE}", postgres_url)


@pytest.fixture(scope="session")
def web_redis() -> Iterator[str]:
    server = RedisServer.start()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def web_settings(postgres_url: str, web_redis: str) -> Settings:
    url = _own_database(postgres_url)
    migrate.upgrade(url)
    return Settings(database_url=url, redis_url=web_redis, secret_key=SECRET_KEY, bootstrap_admin_token=ADMIN_TOKEN)


@pytest.fixture(scope="session")
def server(web_settings: Settings) -> Iterator[LiveServer]:
    live = LiveServer(create_app(web_settings)).start()
    yield live
    live.stop()


class Api:
    """Seeds and checks through the real API, as admin unless told otherwise."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.admin = httpx.Client(base_url=base_url + "/api/v1", timeout=30,
                                  headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        self.tokens: dict[str, str] = {}

    def token(self, name: str, role: str) -> str:
        if name not in self.tokens:
            response = self.admin.post("/tokens", json={"name": name, "role": role})
            assert response.status_code == 201, response.text
            self.tokens[name] = response.json()["token"]
        return self.tokens[name]

    def canary(self, model: str, *, weight: str = "5", description: str = "ImageNet classifier, batch 1-32") -> None:
        """``model`` with versions 3 and 4 (sm_80 engines, endpoints on the external pool a100), 95/5."""
        response = self.admin.post("/models", json={"name": model, "description": description})
        assert response.status_code == 201, response.text
        self.version(model, "3", precision="fp16", benchmark={"p50_ms": 4.1, "p99_ms": 9.8, "throughput": 2150,
                                                               "gpu_mem_mb": 1840})
        self.version(model, "4", precision="int8", notes="INT8 calibration on 2k ImageNet images",
                     benchmark={"p50_ms": 2.6, "p99_ms": 6.9, "throughput": 3420, "gpu_mem_mb": 1010})
        self.put_traffic(model, {"3": str(100 - float(weight)), "4": weight}, default="3", reason="first canary",
                         if_match='"0"')

    def version(self, model: str, version: str, *, precision: str = "fp16", notes: str = "",
                benchmark: dict[str, float] | None = None, urls: list[str] | None = None) -> None:
        """A version with an sm_80 engine and backends on the external pool (none: its deployment is pending)."""
        response = self.admin.post(f"/models/{model}/versions", json={
            "version": version, "precision": precision, "trt_version": "10.3", "notes": notes,
            "engines": [{"gpu_arch": "sm_80", "uri": f"s3://engines/{model}/{version}/sm_80.plan",
                         "sha256": "ab" * 32, "size_bytes": 96 << 20, "benchmark": benchmark}]})
        assert response.status_code == 201, response.text
        response = self.admin.put(f"/models/{model}/versions/{version}/endpoints", json={
            "pool": "a100", "urls": [f"http://127.0.0.1:{9000 + int(version)}"] if urls is None else urls})
        assert response.status_code == 200, response.text

    def put_traffic(self, model: str, splits: dict[str, str], *, default: str, reason: str,
                    if_match: str | None = None) -> dict[str, Any]:
        if if_match is None:
            if_match = self.admin.get(f"/models/{model}/traffic").headers["etag"]
        response = self.admin.put(f"/models/{model}/traffic", headers={"If-Match": if_match}, json={
            "default_version": default, "reason": reason,
            "splits": [{"version": v, "weight": w} for v, w in splits.items()]})
        assert response.status_code == 200, response.text
        return response.json()

    def traffic(self, model: str) -> dict[str, Any]:
        response = self.admin.get(f"/models/{model}/traffic")
        assert response.status_code == 200, response.text
        return response.json()

    def weights(self, model: str) -> dict[str, float]:
        return {s["version"]: s["weight"] for s in self.traffic(model)["splits"]}

    def report_stats(self, model: str, *, minutes: int = 5, canary: int = 52) -> None:
        """Router windows for the last few minutes: 3 steady, 4 a little faster but with more errors; each
        served from two pools of different GPU architectures. ``canary``: version 4's requests per window."""
        router = httpx.Client(base_url=self.base_url + "/api/v1", timeout=30, headers={
            "Authorization": f"Bearer {self.token('edge-router-1', 'router')}"})
        now = time.time()
        for i in range(minutes * 6):
            end = now - (minutes * 6 - 1 - i) * 10
            wobble = 1 + 0.15 * ((i * 7) % 5 - 2) / 2
            versions = {"3": _window("3", int(940 * wobble), errors=1, shape=(5, 28, 40, 19, 6, 2)),
                        "4": _window("4", int(canary * wobble), errors=1 if i % 2 else 0,
                                     shape=(22, 45, 24, 6, 2, 1))}
            response = router.post("/stats/report", json={
                "router": "edge-router-1", "window_start": end - 10, "window_end": end,
                "models": {model: versions}})
            assert response.status_code == 202, response.text
        router.close()

    def close(self) -> None:
        self.admin.close()


def _window(version: str, requests: int, *, errors: int, shape: tuple[int, ...]) -> dict[str, Any]:
    # Spread requests over the 4-20 ms buckets in proportions ``shape``; 60% served on a100, 40% on h100.
    first = LATENCY_BOUNDS_MS.index(5.0)
    buckets = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    total = sum(shape)
    for offset, part in enumerate(shape):
        buckets[first + offset] = requests * part // total
    buckets[first + 1] += requests - sum(buckets)

    def cell(counts: list[int], errors: int) -> dict[str, Any]:
        latency = sum(n * LATENCY_BOUNDS_MS[i] for i, n in enumerate(counts) if i < len(LATENCY_BOUNDS_MS))
        kinds = {"http_5xx": errors} if errors else {}
        return {"requests": sum(counts), "errors": errors, "fallbacks": 0, "latency_sum_ms": latency,
                "buckets": counts, "error_kinds": kinds}

    a100 = [n * 3 // 5 for n in buckets]
    h100 = [n - m for n, m in zip(buckets, a100)]
    served = [{"version": version, "pool": "a100", "gpu_arch": "sm_80", **cell(a100, errors)},
              {"version": version, "pool": "h100", "gpu_arch": "sm_90", **cell(h100, 0)}]
    return {**cell(buckets, errors), "served": [s for s in served if s["requests"]]}


@pytest.fixture(scope="session")
def api(server: LiveServer) -> Iterator[Api]:
    client = Api(server.url)
    response = client.admin.put("/pools/a100", json={"gpu_arch": "sm_80", "kind": "external", "trt_version": "10.3",
                                                     "allowed_endpoints": ["127.0.0.1"]})
    assert response.status_code in (200, 201), response.text
    yield client
    client.close()


@pytest.fixture
def model(api: Api, request: pytest.FixtureRequest) -> str:
    """A model of this test's own, seeded with a 95/5 canary."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.originalname.removeprefix("test_").lower()).strip("-")[:40]
    name = f"web-{slug.strip('-')}-{hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:6]}"
    api.canary(name)
    return name


# Package scope: Playwright's sync API keeps an event loop running in this thread while it
# lives, which would break asyncio.run() in any test collected after tests/web.
@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def sign_in(browser: Any, server: LiveServer, api: Api) -> Iterator[Callable[[str, str], Any]]:
    contexts: list[Any] = []

    def signed_in(name: str, role: str) -> Any:
        context = browser.new_context(base_url=server.url, viewport=VIEWPORT)
        context.set_default_timeout(10_000)
        contexts.append(context)
        page = context.new_page()
        page.goto("/ui/")
        assert "/ui/login" in page.url
        page.fill("#token", api.token(name, role))
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r"/ui/$"))
        return page

    yield signed_in
    for context in contexts:
        context.close()


def screenshot(page: Any, name: str, *, docs: str | None = None) -> Path:
    """Full-page PNG in test-artifacts/ (gitignored).

    ``docs`` names the committed copy in docs/ for the README; it is written when
    missing or when GRAYROUTE_UPDATE_DOCS=1, so a plain test run leaves the tree clean.
    """
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if docs:
        publish_doc(path, docs)
    return path


def publish_doc(path: Path, docs: str) -> None:
    """Copy a screenshot to docs/ when missing or when GRAYROUTE_UPDATE_DOCS=1."""
    target = ROOT / "docs" / docs
    if os.environ.get("GRAYROUTE_UPDATE_DOCS") == "1" or not target.exists():
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(path, target)
