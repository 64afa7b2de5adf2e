"""Stats history: windows merged into slots (Redis through the API, memory in process), read back as series."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
import redis

from control_plane.stats import service as stats_service
from control_plane.stats.schemas import StatsReport
from router.stats import LATENCY_BOUNDS_MS, REDIS_KEY_PREFIX, bucket_index
from tests.control_plane.conftest import Api

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def _report(end: float, *, requests: dict[str, int], errors: int = 0, router: str = "edge-1",
            pool: str = "a100", arch: str = "sm_80", ms: float = 12.0) -> dict[str, Any]:
    versions = {}
    for version, n in requests.items():
        buckets = [0] * (len(LATENCY_BOUNDS_MS) + 1)
        buckets[bucket_index(ms / 1000)] = n
        cell = {"requests": n, "errors": errors if version == "4" else 0, "fallbacks": 0,
                "latency_sum_ms": ms * n, "buckets": buckets,
                "error_kinds": {"http_5xx": errors} if version == "4" and errors else {}}
        versions[version] = {**cell, "served": [{"version": version, "pool": pool, "gpu_arch": arch, **cell}]}
    return {"router": router, "window_start": end - 5, "window_end": end, "models": {"resnet50": versions}}


@pytest.fixture
def model(api: Api, cp_settings: Any) -> str:
    client = redis.Redis.from_url(cp_settings.redis_url)
    for key in client.scan_iter(f"{REDIS_KEY_PREFIX}resnet50:*"):
        client.delete(key)
    client.close()
    api.canary()
    return "resnet50"


def test_series_returns_the_windows_that_were_reported(api: Api, model: str) -> None:
    now = time.time()
    base = math.floor(now / 60) * 60 - 300  # five whole minutes ago
    produced = {}
    for minute in range(5):
        # two routers, two windows each inside the minute: one point per minute merges all four
        for router in ("edge-1", "edge-2"):
            for second in (7, 41):
                report = _report(base + minute * 60 + second, requests={"3": 100 + minute, "4": 10 + minute},
                                 errors=minute % 2, router=router)
                assert api.as_("router").post("/stats/report", json=report).status_code == 202
        produced[base + minute * 60] = (4 * (100 + minute), 4 * (10 + minute), 4 * (minute % 2))

    response = api.as_("viewer").get(f"/models/{model}/stats/series", params={"since": base, "step": 60})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["step_seconds"] == 60 and body["slot_seconds"] == 60 and body["since"] == base
    lines = {line["version"]: line for line in body["versions"]}
    got = {t: (lines["3"]["requests"][i], lines["4"]["requests"][i], lines["4"]["errors"][i])
           for i, t in enumerate(body["timestamps"]) if lines["3"]["requests"][i]}
    assert got == produced
    assert [r for r in body["routers"] if r] == [2] * 5
    (deployment,) = [d for d in body["deployments"] if d["version"] == "4"]
    assert (deployment["pool"], deployment["gpu_arch"]) == ("a100", "sm_80")
    assert deployment["requests"][:5] == [produced[base + m * 60][1] for m in range(5)]
    assert all(10 < p <= 15 for p in lines["3"]["p50_ms"][:5])

    # the same windows at 10 s resolution: each reported window lands in its own 10 s step
    fine = api.as_("viewer").get(f"/models/{model}/stats/series", params={"since": base, "step": 10}).json()
    assert fine["slot_seconds"] == 10
    fine_3 = next(line for line in fine["versions"] if line["version"] == "3")["requests"]
    nonzero = {t: n for t, n in zip(fine["timestamps"], fine_3) if n}
    assert nonzero == {base + m * 60 + s - s % 10: 2 * (100 + m) for m in range(5) for s in (7, 41)}

    # ?window= counts back from now, with a default step of about 60 points
    last = api.as_("viewer").get(f"/models/{model}/stats/series", params={"window": 600}).json()
    assert last["step_seconds"] == 10 and len(last["timestamps"]) in (60, 61)
    assert sum(next(line for line in last["versions"] if line["version"] == "4")["requests"]) == sum(
        v[1] for v in produced.values())


@pytest.mark.parametrize(("params", "field"), [
    ({"since": 1, "step": 60}, "since"),  # older than the retention
    ({"window": 600, "step": 15}, "step"),
    ({"window": 7200, "step": 10}, "step"),  # 10 s steps reach back one hour
    ({"window": 600, "since": 1}, "since"),
    ({"since": 9e10}, "since"),
    ({"window": 21600, "step": 10}, "step"),
])
def test_series_refuses_what_it_cannot_answer(api: Api, model: str, params: dict[str, Any], field: str) -> None:
    response = api.as_("viewer").get(f"/models/{model}/stats/series", params=params)
    assert response.status_code == 422, response.text
    assert field in response.text


def test_stats_window_past_the_retention_is_refused(api: Api, model: str) -> None:
    response = api.as_("viewer").get(f"/models/{model}/stats", params={"window": 6 * 3600 + 1})
    assert response.status_code == 422 and "window" in response.text
    assert api.as_("viewer").get(f"/models/{model}/stats", params={"window": 6 * 3600}).status_code == 200


async def test_memory_store_keeps_and_drops_slots_like_redis() -> None:
    store = stats_service.MemoryStatsStore(600)
    now = 1_800_000_000.0
    for age in (900, 500, 20):
        await stats_service.record(store, report=StatsReport.model_validate(
            _report(now - age, requests={"3": 10, "4": 2})))
    series = await stats_service.series(store, model="resnet50", since=now - 600, until=now, step=60)
    three = series.versions[0]
    assert three.version == "3" and sum(three.requests) == 20  # the 900 s old window is past the retention
    stats = await stats_service.get(store, model="resnet50", window=60, now=now)
    assert [(v.version, v.requests) for v in stats.versions] == [("3", 10), ("4", 2)]
    assert stats.versions[1].share_of_requests == pytest.approx(2 / 12)


def test_intervals_match_the_published_examples() -> None:
    # Newcombe (1998), "Interval estimation for the difference between independent proportions", method 10
    d, low, high = stats_service.rate_difference(56, 70, 48, 80)
    assert (round(d, 4), round(low, 4), round(high, 4)) == (0.2, 0.0524, 0.3339)
    assert tuple(round(x, 4) for x in stats_service.rate_difference(9, 10, 3, 10)[1:]) == (0.1705, 0.809)
    # Wilson score interval, 81 of 263
    assert tuple(round(x, 4) for x in stats_service.wilson(81, 263)) == (0.2553, 0.3662)
    assert stats_service.wilson(0, 0) == (0.0, 1.0)
    # the p99 interval widens as the count shrinks, and always holds the p99
    buckets = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    buckets[bucket_index(0.004)], buckets[bucket_index(0.012)], buckets[bucket_index(0.045)] = 900, 90, 10
    narrow = stats_service.quantile_interval([n * 100 for n in buckets], 0.99)
    wide = stats_service.quantile_interval(buckets, 0.99)
    assert narrow is not None and wide is not None
    assert wide[0] <= narrow[0] <= narrow[1] <= wide[1]
    assert stats_service.quantile_interval([0] * len(buckets), 0.99) is None
