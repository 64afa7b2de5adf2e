"""Honest figures: real routers, real backends and the real control plane count each request against the
version its user was assigned, and per serving (version, pool, gpu_arch)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
import redis

from router.stats import REDIS_KEY_PREFIX, bucket_index
from tests.control_plane.conftest import Api, api, cp_server, cp_settings, role_tokens  # noqa: F401 - fixtures
from tests.router.conftest import RouterProcess, infer, start_backend

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def _forget_stats(redis_url: str, model: str) -> None:
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{REDIS_KEY_PREFIX}{model}:*"):
        client.delete(key)
    client.close()


@pytest.fixture
def fresh_stats(cp_settings: Any) -> Iterator[None]:  # noqa: F811
    for model in ("scorer", "ranker2"):
        _forget_stats(cp_settings.redis_url, model)
    yield


async def _stats_when(api: Api, model: str, done: Any, timeout: float = 15.0) -> dict[str, Any]:  # noqa: F811
    """GET /stats until ``done(body)`` holds (routers report every half second)."""
    deadline = time.monotonic() + timeout
    while True:
        response = api.as_("viewer").get(f"/models/{model}/stats", params={"window": 300})
        assert response.status_code == 200, response.text
        body = response.json()
        if done(body):
            return body
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.2)


def _revision(api: Api) -> int:  # noqa: F811
    return int(api.as_("router").get("/snapshot").headers["etag"].strip('"'))


async def test_a_killed_canary_counts_its_failures_and_fallbacks_as_its_own(
    api: Api, role_tokens: dict[str, str], cp_settings: Any, fresh_stats: None,  # noqa: F811
    backends: dict, routers: list,
) -> None:
    model = "scorer"
    stable = await start_backend(backends, "3", "3", delay=0.002, model=model)
    canary = await start_backend(backends, "4", "4", delay=0.02, model=model)  # in flight when it dies
    api.canary(model=model, weight=30)
    for version, backend in (("3", stable), ("4", canary)):
        response = api.as_("publisher").put(f"/models/{model}/versions/{version}/endpoints",
                                            json={"pool": "a100", "urls": [backend.url]})
        assert response.status_code == 200, response.text
    router = RouterProcess("--control-plane", api.base_url, "--stats-interval", "0.5", env={
        "GRAYROUTE_TOKEN": role_tokens["router"], "GRAYROUTE_REDIS_URL": cp_settings.redis_url}).start()
    routers.append(router)
    await router.wait_ready(_revision(api))

    assigned: dict[str, str] = {}
    outcomes: Counter[tuple[str, str, str]] = Counter()  # (assigned, served, outcome)
    async with aiohttp.ClientSession() as session:
        # first, everyone is served by the version they are assigned: that is how the test learns it
        for i in range(200):
            status, version, route = await infer(session, router, f"user-{i}", model=model)
            assert status == 200 and route == "split" and version is not None
            assigned[f"user-{i}"] = version
            outcomes[(version, version, "ok")] += 1
        assert 30 < sum(v == "4" for v in assigned.values()) < 90

        done: list[int] = []
        killer: list[asyncio.Task[None]] = []

        async def one(user: str) -> None:
            status, version, route = await infer(session, router, user, model=model)
            done.append(status)
            if len(done) == 300:  # mid-traffic, however fast this machine is: requests are in flight
                killer.append(asyncio.create_task(canary.stop()))
            mine = assigned[user]
            if status >= 500:
                outcome = "error"
            elif version != mine:
                assert route == "fallback", (user, mine, version, route)
                outcome = "fallback"
            else:
                outcome = "ok"
            outcomes[(mine, version or "", outcome)] += 1

        # then a concurrent burst during which the canary's engine dies
        users = [f"user-{i % 200}" for i in range(1200)]
        for start in range(0, len(users), 24):
            await asyncio.gather(*(one(u) for u in users[start:start + 24]))
        await killer[0]

    sent = Counter()
    for (mine, _, _), n in outcomes.items():
        sent[mine] += n
    canary_ok = outcomes[("4", "4", "ok")]
    fallbacks = sum(n for (mine, served, outcome), n in outcomes.items() if mine == "4" and outcome == "fallback")
    failed = sum(n for (mine, _, outcome), n in outcomes.items() if mine == "4" and outcome == "error")
    assert fallbacks > 100, outcomes  # most of the canary's users after the kill
    assert canary_ok > sum(v == "4" for v in assigned.values()), outcomes  # it served some of the burst
    assert all(mine == "4" for (mine, _, outcome) in outcomes if outcome != "ok"), outcomes

    body = await _stats_when(api, model, lambda b: {v["version"]: v["requests"] for v in b["versions"]} == dict(sent))
    figures = {v["version"]: v for v in body["versions"]}
    assert figures["4"]["fallbacks"] == fallbacks
    assert figures["4"]["errors"] == failed
    assert sum(figures["4"]["error_kinds"].values()) == failed
    assert {(s["version"], s["requests"]) for s in figures["4"]["served_by"]} == {("4", canary_ok + failed),
                                                                                  ("3", fallbacks)}
    # the stable version is not flattered or blamed: its own users only, no fallbacks, no errors
    assert (figures["3"]["requests"], figures["3"]["fallbacks"], figures["3"]["errors"]) == (sent["3"], 0, 0)
    assert [(s["version"], s["requests"]) for s in figures["3"]["served_by"]] == [("3", sent["3"])]
    # per deployment: what each engine served, whoever it was assigned to
    deployments = {(d["version"], d["pool"], d["gpu_arch"]): d["requests"] for d in body["deployments"]}
    assert deployments == {("3", "a100", "sm_80"): sent["3"] + fallbacks, ("4", "a100", "sm_80"): canary_ok + failed}

    async with aiohttp.ClientSession() as session, session.get(router.url + "/metrics") as response:
        text = await response.text()
    assert (f'grayroute_assigned_requests_total{{assigned_version="4",model="{model}",outcome="fallback",'
            f'version="3"}} {float(fallbacks)}') in text
    assert (f'grayroute_assigned_requests_total{{assigned_version="3",model="{model}",outcome="ok",'
            f'version="3"}} {float(sent["3"])}') in text


async def test_figures_per_pool_and_architecture_match_the_traffic_each_served(
    api: Api, role_tokens: dict[str, str], cp_settings: Any, fresh_stats: None,  # noqa: F811
    backends: dict, routers: list,
) -> None:
    model = "ranker2"
    api.pool("a100", "sm_80")
    api.pool("h100", "sm_90")
    api.model(model)
    api.version(model, "3", archs=("sm_80", "sm_90"))
    api.version(model, "4", archs=("sm_80", "sm_90"))
    assert api.traffic(model, {"3": 80, "4": 20}, default="3").status_code == 200
    # the same engine is slow on one architecture and fast on the other
    served = {
        ("3", "a100"): await start_backend(backends, "3-a100", "3", delay=0.025, model=model, record=True),
        ("3", "h100"): await start_backend(backends, "3-h100", "3", delay=0.004, model=model, record=True),
        ("4", "a100"): await start_backend(backends, "4-a100", "4", delay=0.012, model=model, record=True),
        ("4", "h100"): await start_backend(backends, "4-h100", "4", status=503, model=model, record=True),
    }
    for (version, pool), backend in served.items():
        response = api.as_("publisher").put(f"/models/{model}/versions/{version}/endpoints",
                                            json={"pool": pool, "urls": [backend.url]})
        assert response.status_code == 200, response.text
    # this router reports by POST (no Redis): the other path into the same store
    router = RouterProcess("--control-plane", api.base_url, "--stats-interval", "0.5",
                           env={"GRAYROUTE_TOKEN": role_tokens["router"]}).start()
    routers.append(router)
    await router.wait_ready(_revision(api))

    timings: dict[str, list[float]] = {}
    async with aiohttp.ClientSession() as session:
        async def one(i: int) -> None:
            started = time.perf_counter()
            await infer(session, router, f"u-{i}", model=model)
            timings.setdefault(str(i), []).append((time.perf_counter() - started) * 1000)

        for start in range(0, 600, 12):
            await asyncio.gather(*(one(i) for i in range(start, start + 12)))

    received = {key: sum(s.path.endswith("/infer") for s in b.behaviour.seen) for key, b in served.items()}
    assert all(n > 20 for n in received.values()), received  # both pools of both versions took traffic
    total = sum(received.values())
    body = await _stats_when(api, model, lambda b: sum(d["requests"] for d in b["deployments"]) == total)
    deployments = {(d["version"], d["pool"], d["gpu_arch"]): d for d in body["deployments"]}
    assert {k: d["requests"] for k, d in deployments.items()} == {
        ("3", "a100", "sm_80"): received[("3", "a100")], ("3", "h100", "sm_90"): received[("3", "h100")],
        ("4", "a100", "sm_80"): received[("4", "a100")], ("4", "h100", "sm_90"): received[("4", "h100")],
    }
    # sm_90 is where version 4 fails, and only there
    assert deployments[("4", "h100", "sm_90")]["errors"] == received[("4", "h100")]
    assert deployments[("4", "h100", "sm_90")]["error_kinds"] == {"http_5xx": received[("4", "h100")]}
    assert deployments[("4", "a100", "sm_80")]["errors"] == 0
    # and version 3 is slow on sm_80, fast on sm_90: the backends' 21 ms difference shows (a loaded machine
    # adds the same overhead to both, so compare them, not each with its delay)
    slow, fast = deployments[("3", "a100", "sm_80")]["p50_ms"], deployments[("3", "h100", "sm_90")]["p50_ms"]
    assert slow is not None and fast is not None
    assert bucket_index(slow / 1000) >= bucket_index(0.025) and fast < slow - 12, (slow, fast)
    versions = {v["version"]: v for v in body["versions"]}
    assert versions["4"]["requests"] == received[("4", "a100")] + received[("4", "h100")]
    assert versions["4"]["errors"] == received[("4", "h100")]
    assert abs(versions["4"]["share_of_requests"] - versions["4"]["requests"] / total) < 1e-9


def test_a_rule_whose_version_is_down_still_names_its_users_version() -> None:
    from router.routing import ModelRouting, Route, Rule, allocate, bucket_counts, decide

    model = ModelRouting.build(
        name="m", key_header="x-user-id", salt="m", anonymous="weighted", default_version="3",
        rules=[Rule("qa", "4", "x-tenant", frozenset({"qa"}))],
        allocation=allocate(None, bucket_counts([("3", 100)])))
    up = decide(model, {"x-user-id": "u1", "x-tenant": "qa"}, {"3", "4"})
    assert (up.version, up.route, up.chosen) == ("4", Route.RULE, None)
    down = decide(model, {"x-user-id": "u1", "x-tenant": "qa"}, {"3"})
    assert (down.version, down.chosen) == ("3", "4")  # served by the split, assigned by the rule
    nobody = decide(model, {"x-user-id": "u1", "x-tenant": "qa"}, set())
    assert (nobody.version, nobody.route, nobody.chosen) == (None, Route.UNAVAILABLE, "4")
    plain = decide(model, {"x-user-id": "u1"}, {"3"})
    assert (plain.version, plain.route, plain.chosen) == ("3", Route.SPLIT, None)
