"""Traffic policies: validation, optimistic concurrency, allocations, history, explain."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tests.control_plane.conftest import Api


def _put(api: Api, body: dict[str, Any], etag: str | None = None, role: str = "release-manager"):  # type: ignore[no-untyped-def]
    headers = {"If-Match": etag} if etag is not None else {}
    return api.as_(role).put("/models/resnet50/traffic", json=body, headers=headers)


def _body(splits: dict[str, Any], default: str = "3", **extra: Any) -> dict[str, Any]:
    return {"default_version": default, "splits": [{"version": v, "weight": w} for v, w in splits.items()], **extra}


def test_get_sends_etag_and_put_needs_if_match(api: Api) -> None:
    api.canary(weight=5)
    response = api.get("/models/resnet50/traffic")
    assert response.headers["etag"] == '"1"'
    assert response.json()["revision"] == 1

    missing = _put(api, _body({"3": 90, "4": 10}))
    assert missing.status_code == 428
    stale = _put(api, _body({"3": 90, "4": 10}), etag='"0"')
    assert stale.status_code == 412
    assert stale.json()["error"]["details"]["live_etag"] == '"1"'
    ok = _put(api, _body({"3": 90, "4": 10}, reason="widen canary"), etag='"1"')
    assert ok.status_code == 200, ok.text
    assert ok.headers["etag"] == '"2"'
    # The stale page that still holds "1" cannot overwrite "2".
    assert _put(api, _body({"3": 50, "4": 50}), etag='"1"').status_code == 412


def test_model_without_policy_has_revision_zero(api: Api) -> None:
    api.model("resnet50")
    response = api.get("/models/resnet50/traffic")
    assert response.headers["etag"] == '"0"'
    assert response.json()["splits"] == [] and response.json()["allocation"] == []


@pytest.mark.parametrize(("body", "field", "reason_part"), [
    (_body({"3": 90, "4": 9.5}), "splits", "sum to 99.5, not 100"),
    (_body({"3": 94.995, "4": 5.005}), "splits[0].weight", "2 decimal places"),
    (_body({"3": 101, "4": -1}), "splits[0].weight", "less than or equal to 100"),
    (_body({"3": "ninety", "4": 10}), "splits[0].weight", "valid decimal"),
    (_body({"3": 90, "9": 10}), "splits[1].version", "has no version '9'"),
    (_body({"3": 100}, default="9"), "default_version", "has no version '9'"),
    (_body({"3": 100}, rules=[{"name": "qa", "match": {"header": "x-tenant", "in": ["qa"]}, "version": "9"}]),
     "rules[0].version", "has no version '9'"),
    (_body({"3": 100}, rules=[{"name": "qa", "match": {"key_in": ["u1"]}, "version": "4"},
                              {"name": "qa", "match": {"key_in": ["u2"]}, "version": "4"}]),
     "rules[1].name", "used twice"),
    (_body({"3": 100}, rules=[{"name": "qa", "match": {"header": "X-User-Id", "in": ["u1"]}, "version": "4"}]),
     "rules[0].match.header", "routing key header"),
    (_body({"3": 100}, rules=[{"name": "qa", "match": {"key_in": []}, "version": "4"}]),
     "rules[0].match.key_in", "must not be empty"),
    ({"default_version": "3", "splits": []}, "splits", "must not be empty"),
    ({"splits": [{"version": "3", "weight": 100}]}, "default_version", "required"),
])
def test_every_validation_rule_names_field_and_reason(api: Api, body: dict[str, Any], field: str,
                                                     reason_part: str) -> None:
    api.canary(weight=5)
    before = api.get("/models/resnet50/traffic").json()
    response = _put(api, body, etag='"1"')
    assert response.status_code == 422, response.text
    details = response.json()["error"]["details"]
    matching = [d for d in details if d["field"] == field]
    assert matching, details
    assert reason_part in matching[0]["reason"], details
    assert api.get("/models/resnet50/traffic").json() == before  # nothing applied


def test_duplicate_split_version_is_refused(api: Api) -> None:
    api.canary(weight=5)
    body = {"default_version": "3", "splits": [{"version": "3", "weight": 50}, {"version": "3", "weight": 50}]}
    response = _put(api, body, etag='"1"')
    assert response.status_code == 422
    assert response.json()["error"]["details"][0] == {"field": "splits[1].version",
                                                      "reason": "version '3' is listed twice"}


def test_a_version_no_pool_can_run_cannot_get_traffic(api: Api) -> None:
    api.canary(weight=5)
    api.version("resnet50", "5", archs=("sm_90",))  # no sm_90 pool
    api.version("resnet50", "6", archs=("sm_80",), trt_version="10.4")  # pool runs TensorRT 10.3
    for version in ("5", "6"):
        response = _put(api, _body({"3": 90, version: 10}), etag='"1"')
        assert response.status_code == 422
        assert "no engine that any pool can run" in response.json()["error"]["details"][0]["reason"]
    # Listing it at 0% is fine: it gets no traffic.
    assert _put(api, _body({"3": 95, "4": 5, "5": 0}), etag='"1"').status_code == 200
    api.pool("h100", gpu_arch="sm_90", trt_version="10.3")
    assert _put(api, _body({"3": 90, "4": 5, "5": 5}), etag='"2"').status_code == 200


def test_allocations_follow_the_spec_vectors_through_the_api(api: Api, routing_vectors: dict[str, Any]) -> None:
    api.pool()
    api.model("resnet50")
    for label in ("3", "4", "5"):
        api.version("resnet50", label)
    for case in routing_vectors["allocations"]:
        current = api.get("/models/resnet50/traffic").json()
        expected_previous = case["previous"] or []
        assert current["allocation"] == expected_previous
        splits = {s["version"]: s["weight"] for s in case["splits"]}
        default = max(splits, key=lambda v: splits[v])
        response = api.traffic("resnet50", splits, default=default)
        assert response.status_code == 200, response.text
        assert response.json()["allocation"] == case["allocation"]


def test_concurrent_writers_exactly_one_wins(api: Api) -> None:
    api.canary(weight=5)
    results: list[int] = []
    barrier = threading.Barrier(8)

    def writer(weight: int) -> None:
        barrier.wait()
        response = _put(api, _body({"3": 100 - weight, "4": weight}, reason=f"writer {weight}"), etag='"1"')
        results.append(response.status_code)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(10, 18)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [200] + [412] * 7
    history = api.get("/models/resnet50/traffic/revisions").json()
    assert [r["revision"] for r in history] == [2, 1]
    winner = history[0]
    assert winner["splits"][1]["weight"] == int(winner["reason"].split()[1])  # no mixed write


def test_history_newest_first_and_reapply_is_a_normal_change(api: Api) -> None:
    api.canary(weight=5)
    api.traffic("resnet50", {"3": 90, "4": 10}, default="3", reason="widen")
    api.traffic("resnet50", {"3": 100, "4": 0}, default="3", reason="roll back: p99 regression")
    history = api.get("/models/resnet50/traffic/revisions").json()
    assert [(r["revision"], r["reason"]) for r in history] == [
        (3, "roll back: p99 regression"), (2, "widen"), (1, "test")]
    assert history[0]["created_by"] == "test-release-manager"

    old = api.get("/models/resnet50/traffic/revisions/2").json()
    body = {"default_version": old["default_version"], "splits": old["splits"], "rules": old["rules"],
            "reason": "re-apply 2", "reapplied_from": 2}
    response = _put(api, body, etag='"3"')
    assert response.status_code == 200, response.text
    # Minimal movement from now (100/0), not a restore of revision 2's layout.
    assert response.json()["allocation"] == [[0, 9000, "3"], [9000, 10000, "4"]]
    assert response.json()["reapplied_from"] == 2
    assert api.get("/audit", params={"action": "traffic.reapply"}).json()[0]["reason"] == "re-apply 2"
    assert api.get("/models/resnet50/traffic/revisions/99").status_code == 404


def test_explain_matches_the_spec_buckets(api: Api, routing_vectors: dict[str, Any]) -> None:
    api.canary(weight=5)
    api.as_("publisher").put("/models/resnet50/versions/3/endpoints",
                             json={"pool": "a100", "urls": ["http://127.0.0.1:9001"]})
    api.as_("publisher").put("/models/resnet50/versions/4/endpoints",
                             json={"pool": "a100", "urls": ["http://127.0.0.1:9002"]})
    for case in [c for c in routing_vectors["buckets"] if c["salt"] == "resnet50"]:
        response = api.as_("viewer").get("/models/resnet50/route", params={"key": case["key"]})
        assert response.status_code == 200, response.text
        explained = response.json()
        assert explained["bucket"] == case["bucket"]
        assert explained["version"] == ("4" if case["bucket"] >= 9500 else "3")
        assert explained["route"] == "split"


def test_explain_rules_and_fallback(api: Api) -> None:
    api.canary(weight=5)
    rules = [{"name": "qa", "match": {"header": "x-tenant", "in": ["qa"]}, "version": "4"},
             {"name": "beta", "match": {"key_in": ["user-0"]}, "version": "4"}]
    api.traffic("resnet50", {"3": 95, "4": 5}, default="3", rules=rules)
    api.as_("publisher").put("/models/resnet50/versions/3/endpoints",
                             json={"pool": "a100", "urls": ["http://127.0.0.1:9001"]})
    # Version 4 has no ready backend: rules fall through, the split falls back to the default.
    qa = api.get("/models/resnet50/route", params={"key": "user-1", "header": "x-tenant:qa"}).json()
    assert (qa["version"], qa["route"], qa["policy_version"]) == ("3", "split", "4")
    api.as_("publisher").put("/models/resnet50/versions/4/endpoints",
                             json={"pool": "a100", "urls": ["http://127.0.0.1:9002"]})
    qa = api.get("/models/resnet50/route", params={"key": "user-1", "header": "x-tenant:qa"}).json()
    assert (qa["version"], qa["route"], qa["rule"]) == ("4", "rule:qa", "qa")
    beta = api.get("/models/resnet50/route", params={"key": "user-0"}).json()
    assert beta["route"] == "rule:beta"
    bad = api.get("/models/resnet50/route", params={"key": "u", "header": "no-colon"})
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["field"] == "header[0]"


def test_trt_versions_match_by_release_not_spelling(api: Api) -> None:
    api.canary(weight=5)
    api.version("resnet50", "7", trt_version="10.3.0")  # pool says "10.3"
    assert api.traffic("resnet50", {"3": 90, "7": 10}, default="3").status_code == 200
