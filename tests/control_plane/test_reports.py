"""The version report against the real control plane, real routers and real backends: its cost and GPU figures
are recomputed here from the test's own counts; missing evidence is labelled, never a zero."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
import redis

from router.parity import REDIS_KEY_PREFIX as PARITY_KEY_PREFIX
from router.stats import REDIS_KEY_PREFIX
from tests.control_plane.conftest import Api, api, cp_server, cp_settings, role_tokens  # noqa: F401 - fixtures
from tests.router.conftest import RouterProcess, backends, infer, routers, start_backend  # noqa: F401 - fixtures

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

WINDOW = 300  # the report's default
# trtexec figures per (version, architecture); throughputs are small so a few requests/s need several GPUs
BENCH = {
    ("3", "sm_80"): {"p50_ms": 4.1, "p99_ms": 9.8, "throughput": 0.7, "gpu_mem_mb": 1840},
    ("4", "sm_80"): {"p50_ms": 2.6, "p99_ms": 6.9, "throughput": 1.5, "gpu_mem_mb": 1010},
    ("3", "sm_90"): {"p50_ms": 2.2, "p99_ms": 5.1, "throughput": 2.4, "gpu_mem_mb": 1800},
    ("4", "sm_90"): {"p50_ms": 1.3, "p99_ms": 3.0, "throughput": 6.0, "gpu_mem_mb": 990},
}
PRICES = {"a100": ("sm_80", "2.50", 1), "h100": ("sm_90", "4.10", 2)}  # pool: (arch, USD per GPU-hour, GPUs/replica)


@pytest.fixture
def fresh(cp_settings: Any) -> Iterator[None]:  # noqa: F811
    client = redis.Redis.from_url(cp_settings.redis_url)
    for prefix in (REDIS_KEY_PREFIX, PARITY_KEY_PREFIX):
        for key in client.scan_iter(f"{prefix}valuation*"):
            client.delete(key)
    client.close()
    yield


def _seed(api: Api, model: str = "valuation") -> None:  # noqa: F811
    for pool, (arch, price, gpus) in PRICES.items():
        api.pool(pool, arch, gpu_hourly_price=price, currency="USD", gpus_per_replica=gpus)
    api.model(model)
    for version in ("3", "4"):
        engines = [{"gpu_arch": arch, "uri": f"s3://engines/{model}/{version}/{arch}.plan", "sha256": "a" * 64,
                    "benchmark": BENCH[(version, arch)]} for arch in ("sm_80", "sm_90")]
        response = api.as_("publisher").post(f"/models/{model}/versions", json={
            "version": version, "precision": "fp16" if version == "3" else "int8", "trt_version": "10.3",
            "engines": engines})
        assert response.status_code == 201, response.text
    assert api.traffic(model, {"3": 50, "4": 50}, default="3").status_code == 200


def _report(api: Api, model: str = "valuation", **params: Any) -> dict[str, Any]:  # noqa: F811
    response = api.as_("viewer").get(f"/models/{model}/report", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def _metrics(report: dict[str, Any], arch: str) -> dict[str, dict[str, Any]]:
    section = next(a for a in report["architectures"] if a["gpu_arch"] == arch)
    return {m["metric"]: m for m in section["metrics"]}


def _trtexec_cost(version: str, pool: str) -> float:
    arch, price, gpus = PRICES[pool]
    return float(price) * gpus / (BENCH[(version, arch)]["throughput"] * 3600) * 1e6


async def test_cost_and_gpus_needed_follow_trtexec_then_live_traffic(
    api: Api, role_tokens: dict[str, str], fresh: None, backends: dict, routers: list,  # noqa: F811
) -> None:
    _seed(api)
    before = _report(api)
    assert (before["baseline"], before["candidate"]) == ("3", "4")
    assert [a["gpu_arch"] for a in before["architectures"]] == ["sm_80", "sm_90"]
    for arch, pool in (("sm_80", "a100"), ("sm_90", "h100")):
        metrics = _metrics(before, arch)
        for version, side in (("3", "baseline"), ("4", "candidate")):
            for key in ("p50_ms", "p99_ms", "throughput", "gpu_mem_mb"):
                figure = metrics[f"trtexec_{key}"][side]
                assert (figure["value"], figure["source"]) == (BENCH[(version, arch)][key], "trtexec")
            cost = metrics["cost_per_million"][side]
            assert cost["source"] == "trtexec" and "live not used" in cost["note"]
            assert cost["value"] == pytest.approx(_trtexec_cost(version, pool), rel=1e-9)
            # no traffic yet: live figures and GPUs needed are labelled, never zero
            for key in ("live_p50_ms", "live_p99_ms", "live_requests_per_second", "live_error_rate",
                        "gpus_needed", "monthly_cost"):
                figure = metrics[key][side]
                assert figure["value"] is None and figure["source"] == "none", (key, figure)
                assert figure["note"].startswith("not enough data"), figure
        p99 = metrics["trtexec_p99_ms"]
        assert p99["change_percent"] == pytest.approx(
            (BENCH[("4", arch)]["p99_ms"] - BENCH[("3", arch)]["p99_ms"]) / BENCH[("3", arch)]["p99_ms"] * 100)

    # live traffic through a real router to real backends on a100: two replicas of 3, one of 4
    served = {"3": [await start_backend(backends, f"3-{i}", "3", model="valuation", record=True) for i in range(2)],
              "4": [await start_backend(backends, "4-0", "4", model="valuation", record=True)]}
    for version, servers in served.items():
        response = api.as_("publisher").put(f"/models/valuation/versions/{version}/endpoints",
                                            json={"pool": "a100", "urls": [s.url for s in servers]})
        assert response.status_code == 200, response.text
    router = RouterProcess("--control-plane", api.base_url, "--stats-interval", "0.5",
                           env={"GRAYROUTE_TOKEN": role_tokens["router"]}).start()
    routers.append(router)
    await router.wait_ready(int(api.as_("router").get("/snapshot").headers["etag"].strip('"')))
    async with aiohttp.ClientSession() as session:
        for start in range(0, 700, 14):
            answers = await asyncio.gather(*(infer(session, router, f"u-{i}", model="valuation")
                                             for i in range(start, start + 14)))
            assert all(status == 200 for status, _, _ in answers)
    received = {v: sum(sum(s.path.endswith("/infer") for s in b.behaviour.seen) for b in servers)
                for v, servers in served.items()}
    assert min(received.values()) >= 200, received  # enough for live figures on both sides
    total = sum(received.values())

    deadline = time.monotonic() + 15
    while True:
        after = _report(api)
        if _metrics(after, "sm_80")["live_requests_per_second"]["candidate"]["sample_size"] == received["4"] and \
                after["architectures"][0]["traffic"]["sample_size"] == total:
            break
        assert time.monotonic() < deadline, after
        await asyncio.sleep(0.2)

    sm80 = _metrics(after, "sm_80")
    traffic = total / WINDOW
    assert after["architectures"][0]["traffic"]["value"] == pytest.approx(traffic)
    for version, side, replicas in (("3", "baseline", 2), ("4", "candidate", 1)):
        rps = sm80["live_requests_per_second"][side]
        assert (rps["value"], rps["sample_size"]) == (pytest.approx(received[version] / WINDOW), received[version])
        for key in ("live_p50_ms", "live_p99_ms"):
            assert sm80[key][side]["value"] is not None and sm80[key][side]["source"] == "live"
        assert sm80["live_error_rate"][side]["value"] == 0.0  # a measured zero: 0 errors in 200+ requests
        # cost from what the replicas carried: 2.50 USD x 1 GPU / (requests/s per replica x 3,600) x 10^6
        per_replica = received[version] / WINDOW / replicas
        cost = sm80["cost_per_million"][side]
        assert cost["source"] == "live" and cost["sample_size"] == received[version]
        assert cost["value"] == pytest.approx(2.50 * 1 / (per_replica * 3600) * 1e6, rel=1e-9)
        gpus = math.ceil(traffic / BENCH[(version, "sm_80")]["throughput"]) * 1
        assert sm80["gpus_needed"][side]["value"] == gpus
        assert sm80["monthly_cost"][side]["value"] == pytest.approx(gpus * 2.50 * 730)
    # sm_90 served nothing: its cost stays trtexec's, its GPUs needed unknown
    sm90 = _metrics(after, "sm_90")
    assert sm90["cost_per_million"]["candidate"]["value"] == pytest.approx(_trtexec_cost("4", "h100"), rel=1e-9)
    assert sm90["gpus_needed"]["candidate"]["value"] is None
    assert "no requests served on sm_90" in sm90["gpus_needed"]["candidate"]["note"]


def test_missing_figures_are_labelled_and_unpriced_pools_say_so(api: Api) -> None:  # noqa: F811
    api.pool("a100", "sm_80")  # no price
    api.pool("h100", "sm_90")
    api.model("bare")
    api.version("bare", "1", archs=("sm_80", "sm_90"))  # no trtexec figures at all
    api.version("bare", "2", archs=("sm_80",))
    assert api.traffic("bare", {"1": 90, "2": 10}, default="1").status_code == 200
    report = _report(api, "bare")
    assert [a["gpu_arch"] for a in report["architectures"]] == ["sm_80"]
    assert report["skipped"] == [{"gpu_arch": "sm_90", "reason": "only version 1 has an engine for sm_90"}]
    section = report["architectures"][0]
    assert section["cost_pool"] is None and "no price set on the pools of sm_80 (a100)" in section["cost_note"]
    assert section["parity_note"].startswith("not shadowed")
    for metric in section["metrics"]:
        for side in ("baseline", "candidate"):
            figure = metric[side]
            assert figure["value"] is None, metric
            assert figure["source"] == "none" and figure["note"].startswith("not enough data"), metric
        assert metric["change_percent"] is None


def test_pool_cost_is_validated_admin_only_and_audited(api: Api) -> None:  # noqa: F811
    body = {"gpu_arch": "sm_80", "kind": "local", "trt_version": "10.3"}
    created = api.pool("a100", kind="local", gpu_hourly_price="2.5", currency="USD", gpus_per_replica=2)
    assert (created["gpu_hourly_price"], created["currency"], created["gpus_per_replica"]) == (2.5, "USD", 2)
    assert api.pool("t4", "sm_75", kind="local")["gpus_per_replica"] == 1  # price optional
    for bad, field in (({"gpu_hourly_price": -1, "currency": "USD"}, "gpu_hourly_price"),
                       ({"gpu_hourly_price": 10_001, "currency": "USD"}, "gpu_hourly_price"),
                       ({"gpu_hourly_price": "1.23456", "currency": "USD"}, "gpu_hourly_price"),
                       ({"gpu_hourly_price": "NaN", "currency": "USD"}, "gpu_hourly_price"),
                       ({"gpu_hourly_price": 2, "currency": "usd"}, "currency"),
                       ({"gpu_hourly_price": 2, "currency": "EURO"}, "currency"),
                       ({"gpu_hourly_price": 2}, "currency"),
                       ({"currency": "USD"}, "gpu_hourly_price"),
                       ({"gpus_per_replica": 0}, "gpus_per_replica"),
                       ({"gpus_per_replica": 65}, "gpus_per_replica")):
        response = api.put("/pools/a100", json={**body, **bad})
        assert response.status_code == 422, (bad, response.text)
        assert [d["field"] for d in response.json()["error"]["details"]] == [field], response.text
    assert api.get("/pools/a100").json()["gpu_hourly_price"] == 2.5  # nothing half-applied
    for role in ("publisher", "release-manager", "viewer"):
        response = api.as_(role).put("/pools/a100", json={**body, "gpu_hourly_price": 0, "currency": "USD"})
        assert response.status_code == 403, (role, response.text)
    response = api.put("/pools/a100", json={**body, "gpu_hourly_price": "1.80", "currency": "EUR",
                                            "gpus_per_replica": 2})
    assert response.status_code == 200, response.text
    events = [e for e in api.get("/audit", params={"action": "pool.update"}).json() if e["target"] == "a100"]
    assert [(e["before"]["gpu_hourly_price"], e["after"]["gpu_hourly_price"], e["after"]["currency"])
            for e in events] == [("2.5", "1.8", "EUR")]
    # the same price written again is no change (2.5 and the column's 2.5000 are one price)
    api.put("/pools/a100", json={**body, "gpu_hourly_price": "1.8", "currency": "EUR", "gpus_per_replica": 2})
    assert len([e for e in api.get("/audit", params={"action": "pool.update"}).json() if e["target"] == "a100"]) == 1


def test_bad_parameters_are_404_or_422_never_500(api: Api) -> None:  # noqa: F811
    _seed(api, "checked")
    for params, status in (({"baseline": "9"}, 404), ({"candidate": "9"}, 404), ({"baseline": "3", "candidate": "3"}, 422),
                           ({"baseline": "4"}, 200), ({"candidate": "-x"}, 422), ({"window": 10}, 422),
                           ({"window": "soon"}, 422)):
        response = api.as_("viewer").get("/models/checked/report", params=params)
        assert response.status_code == status, (params, response.text)
    assert api.as_("viewer").get("/models/nope/report").status_code == 404
    assert api.as_(None).get("/models/checked/report").status_code == 401
    same = api.as_("viewer").get("/models/checked/report", params={"baseline": "3", "candidate": "3"}).json()
    assert same["error"]["details"] == [{"field": "candidate", "reason": "is the baseline (3); compare two "
                                                                          "different versions"}]
    flipped = _report(api, "checked", baseline="4")
    assert (flipped["baseline"], flipped["candidate"]) == ("4", "3")


async def test_a_shadowed_candidate_brings_its_output_parity(
    api: Api, role_tokens: dict[str, str], fresh: None, backends: dict, routers: list,  # noqa: F811
) -> None:
    _seed(api)
    logits = b'{"model_name":"valuation","model_version":"%s","outputs":[{"name":"logits","datatype":"FP32",' \
             b'"shape":[1,4],"data":[0.1,0.7,0.%s,0.1]}]}'
    for version, third in (("3", b"2"), ("4", b"15")):  # the same arg-max; 0.05 apart in one place
        server = await start_backend(backends, version, version, model="valuation",
                                     infer_body=logits % (version.encode(), third))
        response = api.as_("publisher").put(f"/models/valuation/versions/{version}/endpoints",
                                            json={"pool": "a100", "urls": [server.url]})
        assert response.status_code == 200, response.text
    etag = api.as_("release-manager").get("/models/valuation/traffic").headers["etag"]
    response = api.as_("release-manager").put("/models/valuation/traffic", headers={"If-Match": etag}, json={
        "default_version": "3", "reason": "shadow the candidate", "splits": [{"version": "3", "weight": 100}],
        "shadow": {"version": "4", "percent": 100}})
    assert response.status_code == 200, response.text
    router = RouterProcess("--control-plane", api.base_url, "--stats-interval", "0.5",
                           env={"GRAYROUTE_TOKEN": role_tokens["router"]}).start()
    routers.append(router)
    await router.wait_ready(int(api.as_("router").get("/snapshot").headers["etag"].strip('"')))
    async with aiohttp.ClientSession() as session:
        for i in range(60):
            assert (await infer(session, router, f"u-{i}", model="valuation"))[:2] == (200, "3")

    deadline = time.monotonic() + 15
    while True:
        # the candidate gets no assigned traffic now, so name it: the default would pick the busiest other version
        report = _report(api, baseline="3", candidate="4")
        pairs = next(a for a in report["architectures"] if a["gpu_arch"] == "sm_80")["parity"]
        if pairs and pairs[0]["compared"] == 60:
            break
        assert time.monotonic() < deadline, report
        await asyncio.sleep(0.2)
    assert report["shadowed"] is True
    (pair,) = pairs
    assert (pair["shadow_version"], pair["primary_version"]) == ("4", "3")
    (output,) = pair["outputs"]
    assert output["name"] == "logits" and output["top1_agreement"] == 1.0
    assert output["max_abs_error"] == pytest.approx(0.05, abs=1e-6)
    sm90 = next(a for a in report["architectures"] if a["gpu_arch"] == "sm_90")
    assert sm90["parity"] == [] and sm90["parity_note"].startswith("shadowed, but no comparisons on sm_90")


def test_costs_use_the_priced_pool_that_carries_the_traffic(api: Api, fresh: None) -> None:  # noqa: F811
    from router.stats import LATENCY_BOUNDS_MS

    api.pool("a100-east", "sm_80", gpu_hourly_price="3.00", currency="USD")
    api.pool("a100-west", "sm_80", gpu_hourly_price="2.00", currency="EUR")
    api.pool("a100-spot", "sm_80")  # unpriced: never the cost pool
    api.model("valuation")
    for version in ("3", "4"):
        response = api.as_("publisher").post("/models/valuation/versions", json={
            "version": version, "precision": "fp16", "trt_version": "10.3",
            "engines": [{"gpu_arch": "sm_80", "uri": f"s3://e/{version}.plan", "sha256": "a" * 64,
                         "benchmark": BENCH[(version, "sm_80")]}]})
        assert response.status_code == 201, response.text
    assert api.traffic("valuation", {"3": 90, "4": 10}, default="3").status_code == 200
    (section,) = _report(api)["architectures"]
    assert section["cost_pool"]["pool"] == "a100-east"  # no traffic: the first priced pool by name
    assert _metrics(_report(api), "sm_80")["cost_per_million"]["baseline"]["value"] == pytest.approx(
        3.00 / (BENCH[("3", "sm_80")]["throughput"] * 3600) * 1e6)

    # windows as a router posts them: version 3 served 50 requests on east, 400 on west
    def served(pool: str, requests: int) -> dict[str, Any]:
        buckets = [0] * (len(LATENCY_BOUNDS_MS) + 1)
        buckets[LATENCY_BOUNDS_MS.index(5.0)] = requests
        return {"version": "3", "pool": pool, "gpu_arch": "sm_80", "requests": requests, "buckets": buckets,
                "latency_sum_ms": 5.0 * requests}

    parts = [served("a100-east", 50), served("a100-west", 400)]
    window = {"requests": 450, "buckets": [sum(b) for b in zip(*(p["buckets"] for p in parts))],
              "latency_sum_ms": 2250.0, "served": parts}
    now = time.time()
    response = api.as_("router").post("/stats/report", json={
        "router": "edge-1", "window_start": now - 10, "window_end": now, "models": {"valuation": {"3": window}}})
    assert response.status_code == 202, response.text
    report = _report(api)
    assert report["architectures"][0]["cost_pool"] == {"pool": "a100-west", "gpu_hourly_price": 2.0,
                                                       "currency": "EUR", "gpus_per_replica": 1}
    cost = _metrics(report, "sm_80")["cost_per_million"]
    # 400 requests on west but no replicas known there (no deployment): trtexec's throughput, saying why
    assert cost["baseline"]["source"] == "trtexec" and "no ready replicas known on pool a100-west" in \
        cost["baseline"]["note"]
    assert cost["baseline"]["value"] == pytest.approx(2.00 / (BENCH[("3", "sm_80")]["throughput"] * 3600) * 1e6)
    assert _metrics(report, "sm_80")["live_requests_per_second"]["baseline"]["sample_size"] == 450
