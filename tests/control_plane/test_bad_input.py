"""Bad input gets a clear 4xx naming the field, never a 500, and changes nothing.

Each case here once answered 500: Postgres refuses NUL in text, JSON refuses
Infinity, columns have ranges, and int() refuses what str.isdigit() admits.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import pytest

from router.stats import LATENCY_BOUNDS_MS
from tests.control_plane.conftest import Api

NUL = "a\u0000b"
ENGINE = {"gpu_arch": "sm_90", "uri": "s3://engines/resnet50/4/sm_90.plan", "sha256": "a" * 64}
VERSION = {"version": "5", "precision": "fp16", "trt_version": "10.3"}
POOL = {"gpu_arch": "sm_80", "kind": "external", "trt_version": "10.3"}
TRAFFIC = {"default_version": "3", "splits": [{"version": "3", "weight": 95}, {"version": "4", "weight": 5}]}
LONG_TRT = "10." + "3" * 40


def assert_error(response: httpx.Response, status: int, field: str | None = None, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and {"code", "message", "details"} <= set(body["error"]), body
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    if field is not None:
        fields = [d["field"] for d in body["error"]["details"]]
        assert field in fields, (field, body)


def raw(api: Api, method: str, path: str, text: str | bytes, **headers: str) -> httpx.Response:
    return api.as_("admin").request(method, path, content=text,
                                    headers={"Content-Type": "application/json", **headers})


@pytest.mark.parametrize(("method", "path", "body", "field"), [
    ("POST", "/models", {"name": "m1", "description": NUL}, "description"),
    ("POST", "/models", {"name": "m1", "salt": NUL}, "salt"),
    ("PATCH", "/models/resnet50", {"description": NUL}, "description"),
    ("PATCH", "/models/resnet50", {"description": "x", "reason": NUL}, "reason"),
    ("POST", "/models/resnet50/versions", {**VERSION, "notes": NUL}, "notes"),
    ("POST", "/models/resnet50/versions", {**VERSION, "source_uri": NUL}, "source_uri"),
    ("PATCH", "/models/resnet50/versions/4", {"notes": NUL}, "notes"),
    ("PUT", "/pools/p1", {**POOL, "node_selector": {"zone": NUL}}, "node_selector"),
    ("PUT", "/pools/p1", {**POOL, "runtime_image": NUL}, "runtime_image"),
    ("PUT", "/models/resnet50/versions/3/endpoints", {"pool": "a100", "urls": [f"http://{NUL}"]}, "urls"),
    ("PUT", "/models/resnet50/traffic", {**TRAFFIC, "reason": NUL}, "reason"),
    ("PUT", "/models/resnet50/traffic", {**TRAFFIC, "rules": [
        {"name": "beta", "match": {"header": "x-beta", "in": [NUL]}, "version": "4"}]}, "rules[0].match.in"),
    ("PUT", "/models/resnet50/traffic", {**TRAFFIC, "rules": [
        {"name": "beta", "match": {"key_in": [NUL]}, "version": "4"}]}, "rules[0].match.key_in"),
])
def test_nul_in_stored_text_is_a_422_naming_the_field(api: Api, method: str, path: str, body: dict[str, Any],
                                                      field: str) -> None:
    api.canary()
    before = api.get("/audit").json()
    assert_error(api.request(method, path, json=body, headers={"If-Match": '"1"'}), 422, field, "invalid")
    assert api.get("/audit").json() == before  # nothing was written


@pytest.mark.parametrize("param", ["model", "action"])
def test_nul_in_audit_filters_is_a_422(api: Api, param: str) -> None:
    assert_error(api.get("/audit", params={param: NUL}), 422, param)


@pytest.mark.parametrize("number", ["Infinity", "-Infinity", "NaN", "1e309"])
def test_non_finite_benchmark_is_a_422(api: Api, number: str) -> None:
    api.canary()
    body = json.dumps({**ENGINE, "benchmark": {"p50_ms": 1.0}}).replace("1.0", number)
    assert_error(raw(api, "POST", "/models/resnet50/versions/4/engines", body), 422, "benchmark.p50_ms")
    assert [e["gpu_arch"] for e in api.get("/models/resnet50/versions/4").json()["engines"]] == ["sm_80"]


@pytest.mark.parametrize("size", [2**63, 10**30])
def test_size_bytes_beyond_bigint_is_a_422(api: Api, size: int) -> None:
    api.canary()
    assert_error(api.post("/models/resnet50/versions/4/engines", json={**ENGINE, "size_bytes": size}), 422,
                 "size_bytes")
    assert api.post("/models/resnet50/versions/4/engines",
                    json={**ENGINE, "size_bytes": 2**63 - 1}).status_code == 201


@pytest.mark.parametrize(("method", "path", "body", "field"), [
    ("POST", "/models/resnet50/versions", {**VERSION, "trt_version": LONG_TRT}, "trt_version"),
    ("POST", "/models/resnet50/versions/4/engines", {**ENGINE, "trt_version": LONG_TRT}, "trt_version"),
    ("PUT", "/pools/a100", {**POOL, "trt_version": LONG_TRT}, "trt_version"),
])
def test_trt_version_longer_than_its_column_is_a_422(api: Api, method: str, path: str, body: dict[str, Any],
                                                     field: str) -> None:
    api.canary()
    assert_error(api.request(method, path, json=body), 422, field)
    assert api.get("/pools/a100").json()["trt_version"] == "10.3"


def _window(**cell: Any) -> dict[str, Any]:
    buckets = [1] + [0] * len(LATENCY_BOUNDS_MS)
    return {"router": "r1", "window_start": 1.0, "window_end": 2.0,
            "models": {"resnet50": {"3": {"requests": 1, "buckets": buckets, **cell}}}}


@pytest.mark.parametrize(("text", "field"), [
    (json.dumps(_window()).replace('"window_end": 2.0', '"window_end": Infinity'), "window_end"),
    (json.dumps(_window()).replace('"window_start": 1.0', '"window_start": NaN'), "window_start"),
    (json.dumps(_window(latency_sum_ms=1.5)).replace("1.5", "Infinity"), "models.resnet50.3.latency_sum_ms"),
    (json.dumps(_window(requests=10**30, buckets=[10**30] + [0] * len(LATENCY_BOUNDS_MS))),
     "models.resnet50.3.requests"),
])
def test_unstorable_stats_report_is_a_422_and_stats_stay_readable(api: Api, text: str, field: str) -> None:
    api.canary()
    assert_error(raw(api, "POST", "/stats/report", text), 422, field)
    # A stored Infinity once came back as null and broke every later read.
    assert api.get("/models/resnet50/stats").status_code == 200


def test_stats_version_label_with_a_unicode_digit_reads_back(api: Api) -> None:
    api.canary()
    report = _window()
    report["window_end"] = report["window_start"] = __import__("time").time()
    report["models"]["resnet50"]["\u00b2"] = report["models"]["resnet50"].pop("3")
    assert api.post("/stats/report", json=report).status_code == 202
    response = api.get("/models/resnet50/stats")
    assert response.status_code == 200, response.text
    assert [v["version"] for v in response.json()["versions"]] == ["\u00b2"]


@pytest.mark.parametrize("if_match", ['"\u00b2"', '"' + "9" * 5000 + '"', '"abc"', "*", '""', "x" * 8000])
def test_garbage_if_match_is_a_412_and_changes_nothing(api: Api, if_match: str) -> None:
    api.canary()
    response = api.as_("admin").put("/models/resnet50/traffic", json={**TRAFFIC, "splits": [
        {"version": "3", "weight": 50}, {"version": "4", "weight": 50}]}, headers={"If-Match": if_match.encode("latin-1")})
    assert_error(response, 412, code="stale")
    assert api.get("/models/resnet50/traffic").json()["revision"] == 1


@pytest.mark.parametrize("if_none_match", ['"\u00b2"', '"' + "9" * 5000 + '"', "*"])
def test_garbage_if_none_match_serves_the_snapshot(api: Api, if_none_match: str) -> None:
    api.canary()
    response = api.get("/snapshot", headers={"If-None-Match": if_none_match.encode("latin-1")})
    assert response.status_code == 200, response.text
    assert "resnet50" in response.json()["models"]


def test_reapplied_from_beyond_the_column_is_a_422(api: Api) -> None:
    api.canary()
    response = api.put("/models/resnet50/traffic", json={**TRAFFIC, "reapplied_from": 10**30},
                       headers={"If-Match": '"1"'})
    assert_error(response, 422, "reapplied_from")


@pytest.mark.parametrize("big", [2**40, 10**20])
def test_page_bounds_beyond_the_column_mean_no_bound(api: Api, big: int) -> None:
    api.canary()
    assert len(api.get("/audit", params={"before_id": big}).json()) == len(api.get("/audit").json())
    assert [r["revision"] for r in api.get("/models/resnet50/traffic/revisions", params={"before": big}).json()] == [1]
    assert_error(api.get(f"/models/resnet50/traffic/revisions/{big}"), 404, code="not_found")


def test_revision_below_one_is_not_found(api: Api) -> None:
    api.canary()
    assert_error(api.get("/models/resnet50/traffic/revisions/-1"), 404, code="not_found")
    assert_error(api.get("/models/resnet50/traffic/revisions/0"), 404, code="not_found")


@pytest.mark.parametrize("text", [b'{"name": "\xff"}', b"[" * 100_000 + b"]" * 100_000, b'{"name": "m1",'])
def test_unparseable_body_is_a_400_malformed(api: Api, text: bytes) -> None:
    assert_error(raw(api, "POST", "/models", text), 400, code="malformed")


@pytest.mark.parametrize(("text", "content_type"), [
    ("", "application/json"), ('{"name": "m1"}', "text/plain"), ("null", "application/json"),
    ("[1]", "application/json"),
])
def test_body_that_is_not_an_object_is_a_422(api: Api, text: str, content_type: str) -> None:
    assert_error(api.post("/models", content=text, headers={"Content-Type": content_type}), 422, "body")
    assert api.get("/models").json() == []


def test_duplicate_json_keys_take_the_last_and_are_validated(api: Api) -> None:
    assert_error(raw(api, "POST", "/models", '{"name": "ok", "name": "Not A Slug"}'), 422, "name")


@pytest.mark.parametrize("number", ["1e309", "NaN", "-Infinity"])
def test_non_finite_weight_is_a_422(api: Api, number: str) -> None:
    api.canary()
    body = json.dumps({**TRAFFIC, "splits": [{"version": "3", "weight": 7.25}]}).replace("7.25", number)
    assert_error(raw(api, "PUT", "/models/resnet50/traffic", body, **{"If-Match": '"1"'}), 422, "splits[0].weight")


def test_concurrent_creation_of_one_pool_is_never_a_500(api: Api) -> None:
    # Several PUTs of a new pool race to insert the same unique name.
    statuses: list[int] = []

    def put(name: str, client: httpx.Client) -> None:
        statuses.append(client.put(f"/pools/{name}", json=POOL).status_code)

    for round_ in range(8):
        clients = [httpx.Client(base_url=api.base_url + "/api/v1", headers=api.as_("admin").headers, timeout=30)
                   for _ in range(4)]
        threads = [threading.Thread(target=put, args=(f"race{round_}", c)) for c in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for client in clients:
            client.close()
    assert set(statuses) <= {200, 201, 409}, statuses
    assert len(api.get("/pools").json()) == 8


def test_concurrent_first_endpoints_of_a_version_are_never_a_500(api: Api) -> None:
    api.canary()
    statuses: list[int] = []

    def put(client: httpx.Client) -> None:
        statuses.append(client.put("/models/resnet50/versions/4/endpoints",
                                   json={"pool": "a100", "urls": ["http://10.0.0.4:8000"]}).status_code)

    clients = [httpx.Client(base_url=api.base_url + "/api/v1", headers=api.as_("admin").headers, timeout=30)
               for _ in range(6)]
    threads = [threading.Thread(target=put, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for client in clients:
        client.close()
    assert statuses == [200] * 6
    assert [d["endpoints"] for d in api.get("/models/resnet50/deployments").json()] == [["http://10.0.0.4:8000"]]


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("DELETE", "/models", "GET, POST"), ("OPTIONS", "/models/resnet50", "GET, PATCH"),
    ("DELETE", "/models/resnet50/traffic", "GET, PUT"), ("POST", "/pools/a100", "GET, PUT"),
])
def test_wrong_method_is_a_405_allowing_every_method_of_the_path(api: Api, method: str, path: str,
                                                                 allow: str) -> None:
    response = api.request(method, path)
    assert_error(response, 405, code="method_not_allowed")
    assert response.headers["allow"] == allow
