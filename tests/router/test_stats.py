"""Per-version figures: router windows, to the control plane (POST or Redis), merged by /stats."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

from control_plane.stats import service as stats_service
from control_plane.stats.schemas import StatsReport
from router.stats import LATENCY_BOUNDS_MS, REDIS_KEY_PREFIX, SLOTS, bucket_index, parse_slot, percentile_ms
from tests.control_plane.conftest import Api, api, cp_server, cp_settings, role_tokens  # noqa: F401 - fixtures
from tests.router.conftest import (
    ControlPlaneStub,
    RouterProcess,
    infer,
    model_spec,
    router_env,
    snapshot,
    start_backend,
)
from tests.services import RedisServer


def _bucket_of_ms(ms: float) -> int:
    return bucket_index(ms / 1000)


def _client_percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _send(router: RouterProcess, plan: list[tuple[str, str | None]]) -> tuple[Counter, dict[str, list[float]]]:
    """Send (user, explicit version) requests; count answers per (version, status), time them per version."""
    counts: Counter = Counter()
    latencies: dict[str, list[float]] = {}
    async with aiohttp.ClientSession() as session:
        for user, version in plan:
            started = time.perf_counter()
            status, served, _ = await infer(session, router, user, version=version)
            latencies.setdefault(served or "", []).append((time.perf_counter() - started) * 1000)
            counts[(served, status)] += 1
    return counts, latencies


async def test_reports_reach_the_control_plane_and_merge_exactly(
    backends: dict, control_plane: ControlPlaneStub, routers: list, tmp_path: Path,
) -> None:
    await start_backend(backends, "3", "3", delay=0.02)
    await start_backend(backends, "4", "4", delay=0.004)
    await start_backend(backends, "5", "5", status=500)
    spec = model_spec({v: [backends[v].url] for v in ("3", "4", "5")}, [("3", 80), ("4", 10), ("5", 10)],
                      default_version="3")
    control_plane.set(snapshot(1, resnet50=spec))
    router = RouterProcess("--control-plane", control_plane.url, "--stats-interval", "0.5",
                           env=router_env()).start()
    routers.append(router)
    await router.wait_ready(1)
    plan = [(f"u{i}", "3") for i in range(60)] + [(f"u{i}", "4") for i in range(90)] + [("x", "5")] * 7
    _, latencies = await _send(router, plan)
    deadline = time.monotonic() + 5
    while sum(_totals(control_plane.reports).get("requests", {}).values()) < len(plan):
        assert time.monotonic() < deadline, control_plane.reports
        await asyncio.sleep(0.1)

    store = stats_service.MemoryStatsStore(3600)
    for report in control_plane.reports:
        await stats_service.record(store, report=StatsReport.model_validate(report))
    merged = {v.version: v for v in (await stats_service.get(store, model="resnet50", window=60)).versions}
    assert {v: m.requests for v, m in merged.items()} == {"3": 60, "4": 90, "5": 7}
    assert merged["5"].errors == 7 and merged["5"].error_rate == 1.0
    assert merged["3"].errors == 0 and merged["3"].fallbacks == 0
    for version in ("3", "4"):
        for q, field in ((0.5, "p50_ms"), (0.95, "p95_ms")):
            ours = getattr(merged[version], field)
            theirs = _client_percentile(latencies[version], q)
            assert abs(_bucket_of_ms(ours) - _bucket_of_ms(theirs)) <= 1, (version, field, ours, theirs)
    assert merged["3"].p50_ms is not None and 15 < merged["3"].p50_ms <= 40


def _totals(reports: list[dict[str, Any]]) -> dict[str, Counter]:
    totals: dict[str, Counter] = {"requests": Counter()}
    for report in reports:
        for versions in report["models"].values():
            for version, cell in versions.items():
                totals["requests"][version] += cell["requests"]
    return totals


def test_percentile_is_within_its_bucket() -> None:
    buckets = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    buckets[bucket_index(0.012)] = 100  # all between 10 and 15 ms
    p50 = percentile_ms(buckets, 0.5)
    assert p50 is not None and 10 < p50 <= 15
    assert percentile_ms([0] * len(buckets), 0.5) is None


def test_bad_reports_are_refused() -> None:
    cell = {"requests": 2, "errors": 0, "fallbacks": 0, "latency_sum_ms": 1.0,
            "buckets": [2] + [0] * len(LATENCY_BOUNDS_MS)}
    good = {"router": "r", "window_start": 1.0, "window_end": 2.0, "models": {"m": {"1": cell}}}
    StatsReport.model_validate(good)
    for bad in (
        {**good, "bounds_ms": [1.0, 2.0]},
        {**good, "window_end": 0.5},
        {**good, "models": {"m": {"1": {**cell, "buckets": [1, 0]}}}},
        {**good, "models": {"m": {"1": {**cell, "errors": 3}}}},
        {**good, "models": {"m": {"1": {**cell, "requests": 5}}}},
    ):
        with pytest.raises(ValueError):
            StatsReport.model_validate(bad)


@pytest.fixture
def clean_stats(cp_settings: Any) -> Iterator[None]:  # noqa: F811
    client = redis.Redis.from_url(cp_settings.redis_url)
    for key in client.scan_iter("grayroute:stats:ranker:*"):
        client.delete(key)
    yield
    client.close()


@pytest.mark.postgres
@pytest.mark.redis
async def test_real_control_plane_snapshot_and_stats(
    api: Api, role_tokens: dict[str, str], cp_settings: Any, clean_stats: None,  # noqa: F811
    backends: dict, routers: list, tmp_path: Path,
) -> None:
    """Routers against the real control plane: its snapshot routes traffic; /stats merges two routers,
    one reporting through Redis, one by POST."""
    # inference-like delays, so the client's own sub-millisecond overhead stays within a bucket
    stable = await start_backend(backends, "3", "3", delay=0.012)
    candidate = await start_backend(backends, "4", "4", delay=0.006)
    api.canary(model="ranker", weight=10)
    for version, backend in (("3", stable), ("4", candidate)):
        response = api.as_("publisher").put(f"/models/ranker/versions/{version}/endpoints",
                                            json={"pool": "a100", "urls": [backend.url]})
        assert response.status_code == 200, response.text
    revision = int(api.as_("router").get("/snapshot").headers["etag"].strip('"'))
    env = {"GRAYROUTE_TOKEN": role_tokens["router"]}
    with_redis = RouterProcess("--control-plane", api.base_url, "--stats-interval", "0.5",
                               env={**env, "GRAYROUTE_REDIS_URL": cp_settings.redis_url}).start()
    # a long poll period: the traffic change below must arrive through the long-poll, not a later poll
    by_post = RouterProcess("--control-plane", api.base_url, "--stats-interval", "0.5", "--poll-interval", "4",
                            env=env).start()
    routers += [with_redis, by_post]
    await with_redis.wait_ready(revision)
    await by_post.wait_ready(revision)

    explained = {}
    sent: Counter = Counter()
    timings: dict[str, list[float]] = {}
    async with aiohttp.ClientSession() as session:
        for i in range(120):
            user = f"user-{i}"
            if i < 10:
                explained[user] = api.as_("viewer").get("/models/ranker/route", params={"key": user}).json()
            router = with_redis if i % 3 else by_post
            started = time.perf_counter()
            status, version, route = await infer(session, router, user, model="ranker")
            timings.setdefault(version, []).append((time.perf_counter() - started) * 1000)
            assert status == 200 and route == "split"
            sent[version] += 1
            if user in explained:
                assert version == explained[user]["version"], explained[user]
        # a traffic change reaches both routers (Redis notification / HTTP poll)
        assert api.traffic("ranker", {"3": 50, "4": 50}, default="3").status_code == 200
        changed = time.monotonic()
        new_revision = int(api.as_("router").get("/snapshot").headers["etag"].strip('"'))
        await with_redis.wait_ready(new_revision, timeout=5)
        await by_post.wait_ready(new_revision, timeout=5)
        assert time.monotonic() - changed < 2.0  # well under the 4 s poll period

    deadline = time.monotonic() + 10
    while True:
        stats = api.as_("viewer").get("/models/ranker/stats", params={"window": 60})
        assert stats.status_code == 200, stats.text
        body = stats.json()
        got = {v["version"]: v["requests"] for v in body["versions"]}
        if got == dict(sent) and body["routers"] == 2:
            break
        assert time.monotonic() < deadline, (got, sent, body)
        await asyncio.sleep(0.2)
    assert all(v["errors"] == 0 and v["p50_ms"] is not None for v in body["versions"])
    for v in body["versions"]:  # the router's clock starts later than the client's: within one bucket
        theirs = _client_percentile(timings[v["version"]], 0.5)
        assert abs(_bucket_of_ms(v["p50_ms"]) - _bucket_of_ms(theirs)) <= 1, (v, theirs)
    # a router token may report but not read; a viewer may read but not report
    assert api.as_("router").get("/models/ranker/stats").status_code == 403
    report = {"router": "x", "window_start": 1.0, "window_end": 2.0, "models": {}}
    assert api.as_("viewer").post("/stats/report", json=report).status_code == 403
    assert api.as_(None).get("/models/ranker/stats").status_code == 401
    assert api.as_("viewer").get("/models/nope/stats").status_code == 404


async def test_merge_across_routers_and_windows() -> None:
    store = stats_service.MemoryStatsStore(3600)
    width = len(LATENCY_BOUNDS_MS) + 1

    def window(router: str, start: float, requests: int, errors: int, ms: float) -> StatsReport:
        buckets = [0] * width
        buckets[bucket_index(ms / 1000)] = requests
        return StatsReport.model_validate({
            "router": router, "window_start": start, "window_end": start + 5,
            "models": {"m": {"3": {"requests": requests, "errors": errors, "fallbacks": 1, "latency_sum_ms": ms * requests,
                                   "buckets": buckets}}}})

    now = 10_000.0
    for router in ("a", "b"):
        for start in (now - 70, now - 30, now - 25):  # the first ended before the 60 s window
            await stats_service.record(store, report=window(router, start, 10, 1, 12.0))
    stats = await stats_service.get(store, model="m", window=60, now=now)
    (v,) = stats.versions
    assert stats.routers == 2
    assert (v.requests, v.errors, v.fallbacks) == (40, 4, 4)
    assert v.error_rate == 0.1
    assert v.requests_per_second == pytest.approx(40 / 60)
    assert v.p50_ms is not None and 10 < v.p50_ms <= 15 and v.mean_ms == pytest.approx(12.0)
    assert (await stats_service.get(store, model="other", window=60, now=now)).versions == []


@pytest.mark.redis
async def test_reports_spool_while_redis_and_the_control_plane_are_down(
    backends: dict, control_plane: ControlPlaneStub, routers: list, tmp_path: Path,
) -> None:
    """Both sinks down: windows wait in memory and go out when one is back; a full spool drops the oldest."""
    store = RedisServer.start()
    client = redis.Redis.from_url(store.url)
    try:
        backend = await start_backend(backends, "3", "3")
        raw = snapshot(1, resnet50=model_spec({"3": [backend.url]}, [("3", 100)]))
        control_plane.set(raw)
        file = tmp_path / "snapshot.json"
        file.write_bytes(raw)
        router = RouterProcess("--control-plane", control_plane.url, "--snapshot-file", str(file),
                               "--stats-interval", "0.3", "--stats-spool", "4", env=router_env(store.url)).start()
        routers.append(router)
        await router.wait_ready(1)

        async def sent_in_windows(windows: int, per_window: int) -> int:
            async with aiohttp.ClientSession() as session:
                for w in range(windows):
                    for i in range(per_window):
                        assert (await infer(session, router, f"u{w}-{i}"))[0] == 200
                    await asyncio.sleep(0.4)  # past the window's end
            return windows * per_window

        def in_redis() -> int:
            """Requests merged into the fine (10 s) slots: each window lands in exactly one."""
            total = 0
            for key in client.scan_iter(f"{REDIS_KEY_PREFIX}resnet50:{SLOTS[0][0]}:*"):
                _routers, cells = parse_slot(client.hgetall(key))
                total += sum(cell.requests for cell in cells.values())
            return total

        async def until(check: Any, what: str) -> None:
            deadline = time.monotonic() + 10
            while not check():
                assert time.monotonic() < deadline, what
                await asyncio.sleep(0.1)

        async def gauges() -> dict[str, float]:
            async with aiohttp.ClientSession() as session, session.get(router.url + "/metrics") as response:
                text = await response.text()
            return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
                    if line.startswith("grayroute_stats_reports_")}

        before = await sent_in_windows(1, 5)
        await until(lambda: in_redis() == before, "reports reach Redis")

        # both down: three windows of requests wait in the spool
        store.kill()
        await control_plane.stop()
        during = await sent_in_windows(3, 4)
        assert (await gauges())["grayroute_stats_reports_spooled"] >= 1
        await control_plane.start()  # one sink back: everything spooled goes out, oldest first
        def posted() -> int:
            return sum(c["requests"] for r in control_plane.reports for c in r["models"]["resnet50"].values())

        await until(lambda: posted() == during, "spooled reports reach the control plane")
        figures = await gauges()
        assert figures["grayroute_stats_reports_spooled"] == 0
        assert figures["grayroute_stats_reports_dropped_total"] == 0
        windows = [r["window_end"] for r in control_plane.reports]
        assert windows == sorted(windows) and len(windows) >= 3  # one report per window, in order

        # down again, for longer than the spool holds: the oldest windows are dropped and counted
        await control_plane.stop()
        await sent_in_windows(8, 1)
        figures = await gauges()
        assert figures["grayroute_stats_reports_spooled"] == 4
        dropped = figures["grayroute_stats_reports_dropped_total"]
        assert dropped >= 3
        store.launch()  # an empty Redis (no persistence) on the same port: it gets what was kept
        await until(lambda: in_redis() == 4, "the kept windows reach Redis")
        assert (await gauges())["grayroute_stats_reports_spooled"] == 0
    finally:
        client.close()
        store.stop()
