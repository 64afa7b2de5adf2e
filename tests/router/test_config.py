"""Snapshot delivery: Redis notifications, HTTP polling while Redis is down, the local file."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.router.conftest import (
    ControlPlaneStub,
    RouterProcess,
    infer,
    model_spec,
    publish,
    router_env,
    snapshot,
    start_backend,
)
from tests.services import RedisServer

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisServer]:
    """A Redis of these tests' own: they kill it, and publish revisions no other test expects."""
    server = RedisServer.start()
    yield server
    server.stop()


def _spec(backends: dict, canary: float) -> dict:
    return model_spec({"3": [backends["3"].url], "4": [backends["4"].url]}, [("3", 100 - canary), ("4", canary)],
                      default_version="3")


async def _eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if await check():
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    pytest.fail(f"{what} did not happen within {timeout}s")


async def _serves(router: RouterProcess, revision: int) -> bool:
    return await router.revision() == revision


@pytest.fixture
async def two_versions(backends: dict) -> dict:
    await start_backend(backends, "3", "3")
    await start_backend(backends, "4", "4")
    return backends


async def test_redis_down_polls_then_notifications_resume(
    two_versions: dict, control_plane: ControlPlaneStub, own_redis: RedisServer, routers: list, tmp_path: Path,
) -> None:
    redis_server, redis_url = own_redis, own_redis.url
    control_plane.set(snapshot(1, resnet50=_spec(two_versions, 5)))
    router = RouterProcess("--control-plane", control_plane.url, "--snapshot-file", str(tmp_path / "s.json"),
                           env=router_env(redis_url)).start()
    routers.append(router)
    assert await router.wait_ready(1) == 1
    # a notification: store + publish, the control plane's HTTP side still says revision 1
    await publish(redis_url, snapshot(2, resnet50=_spec(two_versions, 10)))
    # the HTTP side still says revision 1: only the notification can deliver revision 2
    took = await _eventually(lambda: _serves(router, 2), 2.0, "notification")
    assert took < 1.0
    fetches = control_plane.fetches

    redis_server.kill()
    control_plane.set(snapshot(3, resnet50=_spec(two_versions, 20)))
    await _eventually(lambda: _serves(router, 3), 5.0, "polling while Redis is down")
    assert control_plane.fetches > fetches
    control_plane.set(snapshot(4, resnet50=_spec(two_versions, 30)))
    await _eventually(lambda: _serves(router, 4), 5.0, "a second poll")

    redis_server.launch()
    await asyncio.sleep(3.0)  # the router notices Redis is back on its next poll round
    await control_plane.stop()  # from now on only Redis can deliver
    await publish(redis_url, snapshot(5, resnet50=_spec(two_versions, 40)))
    await _eventually(lambda: _serves(router, 5), 3.0, "notifications after Redis returned")
    async with aiohttp.ClientSession() as session:
        assert (await infer(session, router, "someone"))[0] == 200


async def test_control_plane_down_keeps_serving_and_restarts_from_file(
    two_versions: dict, control_plane: ControlPlaneStub, routers: list, tmp_path: Path,
) -> None:
    file = tmp_path / "last-good.json"
    control_plane.set(snapshot(11, resnet50=_spec(two_versions, 5)))
    router = RouterProcess("--control-plane", control_plane.url, "--snapshot-file", str(file),
                           "--poll-interval", "0.2", env=router_env()).start()
    routers.append(router)
    await router.wait_ready(11)
    control_plane.set(snapshot(12, resnet50=_spec(two_versions, 50)))
    await _eventually(lambda: _serves(router, 12), 3.0, "poll without Redis")
    await _eventually(lambda: _file_revision(file, 12), 3.0, "persisting the snapshot")
    await control_plane.stop()
    await asyncio.sleep(0.5)
    async with aiohttp.ClientSession() as session:
        results = [await infer(session, router, f"u{i}") for i in range(50)]
        assert all(status == 200 for status, _, _ in results)
        router.stop()
        restarted = RouterProcess("--control-plane", control_plane.url, "--snapshot-file", str(file),
                                  env=router_env(), port=router.port).start()
        routers.append(restarted)
        assert await restarted.wait_ready() == 12
        assert [await infer(session, restarted, f"u{i}") for i in range(50)] == results


async def _file_revision(file: Path, revision: int) -> bool:
    try:
        return bool(orjson.loads(await asyncio.to_thread(file.read_bytes))["revision"] == revision)
    except (OSError, ValueError):
        return False


async def test_malformed_or_older_snapshots_are_refused(
    two_versions: dict, control_plane: ControlPlaneStub, own_redis: RedisServer, routers: list, tmp_path: Path,
) -> None:
    redis_url = own_redis.url
    control_plane.set(snapshot(21, resnet50=_spec(two_versions, 5)))
    router = RouterProcess("--control-plane", control_plane.url, env=router_env(redis_url)).start()
    routers.append(router)
    await router.wait_ready(21)
    good = _spec(two_versions, 5)
    bad_documents = [
        b"{not json",
        orjson.dumps({"revision": 22, "models": {"resnet50": {**good, "allocation": [[0, 9000, "3"]]}}}),
        orjson.dumps({"revision": 23, "models": {"resnet50": {**good, "splits": [{"version": "3", "weight": 90}]}}}),
        orjson.dumps({"revision": 24, "models": {"resnet50": {**good, "default_version": "7"}}}),
        orjson.dumps({"revision": 25, "models": {"resnet50": {**good, "versions": {
            "3": {"endpoints": [{"url": "ftp://x", "pool": "p", "gpu_arch": "sm_80"}]}, "4": {"endpoints": []}}}}}),
        snapshot(20, resnet50=_spec(two_versions, 50)),  # older: never go backwards
    ]
    for raw in bad_documents:
        await publish_raw(redis_url, raw, announce=26)
        await asyncio.sleep(0.2)
        assert await router.revision() == 21, raw[:80]
    async with aiohttp.ClientSession() as session:
        assert (await infer(session, router, "x"))[0] == 200
    assert "refused snapshot" in router.output()
    # a good one still gets through afterwards
    await publish(redis_url, snapshot(27, resnet50=_spec(two_versions, 10)))
    await _eventually(lambda: _serves(router, 27), 2.0, "a good snapshot after bad ones")


async def publish_raw(redis_url: str, raw: bytes, *, announce: int) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url)
    try:
        await client.set("grayroute:snapshot", raw)
        await client.publish("grayroute:snapshot", str(announce))
    finally:
        await client.aclose()
