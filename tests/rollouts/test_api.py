"""The rollout resource through the real API: validation, gates, one live rollout per model, the traffic hold."""

from __future__ import annotations

import concurrent.futures
from typing import Any

import pytest

from tests.control_plane.conftest import Api

STEPS = [{"weight": 5, "pause_seconds": 600}, {"weight": 50, "pause_seconds": 600}, {"weight": 100}]


def start(api: Api, body: dict[str, Any], model: str = "resnet50", role: str = "release-manager") -> Any:
    return api.as_(role).post(f"/models/{model}/rollouts", json={"reason": "test", **body})


def fields(response: Any) -> list[str]:
    return [d["field"] for d in response.json()["error"]["details"]]


@pytest.fixture
def seeded(api: Api) -> Api:
    api.pool()
    api.pool("h100", gpu_arch="sm_90")
    api.model("resnet50")
    api.version("resnet50", "3", archs=("sm_80", "sm_90"), precision="fp32")
    api.version("resnet50", "4", archs=("sm_80", "sm_90"))
    api.version("resnet50", "5", archs=("sm_80",))
    response = api.traffic("resnet50", {"3": 100}, default="3")
    assert response.status_code == 200, response.text
    return api


@pytest.mark.parametrize(("steps", "field"), [
    ([{"weight": 5}, {"weight": 5}, {"weight": 100}], "steps[1].weight"),
    ([{"weight": 50}, {"weight": 10}, {"weight": 100}], "steps[1].weight"),
    ([{"weight": 5}, {"weight": 50}], "steps[1].weight"),
    ([{"weight": 5}, {"weight": 101}], "steps[1].weight"),
    ([{"weight": 0}, {"weight": 100}], "steps[0].weight"),
    ([{"weight": 5, "pools": ["nope"]}, {"weight": 100}], "steps[0].pools[0]"),
    ([{"weight": 5, "pause_seconds": -1}, {"weight": 100}], "steps[0].pause_seconds"),
    ([], "steps"),
])
def test_bad_steps_are_refused_naming_the_field(seeded: Api, steps: list[dict[str, Any]], field: str) -> None:
    response = start(seeded, {"candidate": "4", "steps": steps})
    assert response.status_code == 422, response.text
    assert field in fields(response)
    assert seeded.get("/models/resnet50/rollouts").json() == []


@pytest.mark.parametrize(("body", "field"), [
    ({"candidate": "9"}, "candidate"),
    ({"candidate": "4", "baseline": "9"}, "baseline"),
    ({"candidate": "3"}, "candidate"),
    ({"candidate": "4", "baseline": "4"}, "candidate"),
    ({"candidate": "4", "shadow": {"percent": 0, "seconds": 60}}, "shadow.percent"),
    ({"candidate": "4", "shadow": {"percent": 10, "seconds": 0}}, "shadow.seconds"),
    ({"candidate": "4", "analysis": {"min_top1_agreement": 1.5}}, "analysis.min_top1_agreement"),
    ({"candidate": "4", "analysis": {"max_p99_ratio": 0.5}}, "analysis.max_p99_ratio"),
    ({"candidate": "4", "analysis": {"min_requests": 0}}, "analysis.min_requests"),
])
def test_bad_versions_and_settings_are_refused_naming_the_field(seeded: Api, body: dict[str, Any],
                                                                 field: str) -> None:
    response = start(seeded, {"steps": STEPS, **body})
    assert response.status_code == 422, response.text
    assert field in fields(response)


def test_retired_candidate_is_refused(seeded: Api) -> None:
    seeded.version("resnet50", "6")
    assert seeded.as_("release-manager").post("/models/resnet50/versions/6/retire",
                                              json={"reason": "old"}).status_code in (200, 204)
    response = start(seeded, {"candidate": "6", "steps": STEPS})
    assert response.status_code == 422
    assert fields(response) == ["candidate"]
    assert "retired" in response.text


def test_start_applies_step_one_as_an_audited_revision_and_holds_traffic(seeded: Api) -> None:
    response = start(seeded, {"candidate": "4", "steps": STEPS})
    assert response.status_code == 201, response.text
    rollout = response.json()
    assert (rollout["state"], rollout["phase"], rollout["step_index"], rollout["baseline"]) == \
        ("running", "steps", 0, "3")
    traffic = seeded.get("/models/resnet50/traffic").json()
    assert {s["version"]: s["weight"] for s in traffic["splits"]} == {"3": 95, "4": 5}
    assert traffic["created_by"] == f"rollout:{rollout['id']}"
    assert traffic["default_version"] == "3"
    # A person's change is refused while it runs, naming the rollout; so are the quick actions.
    manual = seeded.traffic("resnet50", {"3": 50, "4": 50}, default="3")
    assert manual.status_code == 409, manual.text
    assert f"rollout {rollout['id']}" in manual.json()["error"]["message"]
    etag = seeded.get("/models/resnet50/traffic").headers["etag"]
    action = seeded.as_("release-manager").post("/models/resnet50/traffic/promote", json={"version": "4"},
                                                headers={"If-Match": etag})
    assert action.status_code == 409
    # One live rollout per model.
    again = start(seeded, {"candidate": "5", "steps": STEPS})
    assert again.status_code == 409
    # Paused: a person may change traffic again.
    path = f"/models/resnet50/rollouts/{rollout['id']}"
    assert seeded.as_("release-manager").post(path + "/pause", json={"reason": "look"}).json()["state"] == "paused"
    assert seeded.as_("release-manager").post(path + "/pause", json={}).status_code == 409
    assert seeded.traffic("resnet50", {"3": 90, "4": 10}, default="3").status_code == 200
    resumed = seeded.as_("release-manager").post(path + "/resume", json={"reason": "go"})
    assert resumed.json()["state"] == "running"
    assert {s["version"]: s["weight"] for s in seeded.get("/models/resnet50/traffic").json()["splits"]} == \
        {"3": 95, "4": 5}
    # Abort restores the policy live at the start.
    aborted = seeded.as_("release-manager").post(path + "/abort", json={"reason": "enough"})
    assert aborted.json()["state"] == "aborted"
    traffic = seeded.get("/models/resnet50/traffic").json()
    assert {s["version"]: s["weight"] for s in traffic["splits"]} == {"3": 100}
    assert traffic["reapplied_from"] == rollout["start_revision"]
    assert seeded.traffic("resnet50", {"3": 100}, default="3").status_code == 200
    actions = [e["action"] for e in seeded.get("/audit", params={"model": "resnet50"}).json()]
    for expected in ("rollout.started", "rollout.paused", "rollout.resumed", "rollout.aborted"):
        assert expected in actions


def test_promote_skips_to_100_and_makes_the_candidate_default(seeded: Api) -> None:
    rollout = start(seeded, {"candidate": "4", "steps": STEPS}).json()
    promoted = seeded.as_("admin").post(f"/models/resnet50/rollouts/{rollout['id']}/promote", json={"reason": "ok"})
    assert promoted.status_code == 200, promoted.text
    assert (promoted.json()["state"], promoted.json()["step_index"]) == ("succeeded", 3)
    traffic = seeded.get("/models/resnet50/traffic").json()
    assert traffic["default_version"] == "4"
    assert {s["version"]: s["weight"] for s in traffic["splits"]} == {"3": 0, "4": 100}
    assert seeded.as_("admin").post(f"/models/resnet50/rollouts/{rollout['id']}/abort", json={}).status_code == 409


def test_roles(seeded: Api) -> None:
    assert start(seeded, {"candidate": "4", "steps": STEPS}, role="viewer").status_code == 403
    assert start(seeded, {"candidate": "4", "steps": STEPS}, role="publisher").status_code == 403
    assert start(seeded, {"candidate": "4", "steps": STEPS}, role="admin").status_code == 201
    assert seeded.as_("viewer").get("/models/resnet50/rollouts").status_code == 200


def benchmarked(api: Api, label: str, p99: dict[str, float]) -> None:
    engines = [{"gpu_arch": arch, "uri": f"s3://engines/resnet50/{label}/{arch}.plan", "sha256": "b" * 64,
                "benchmark": {"p50_ms": ms / 2, "p99_ms": ms}} for arch, ms in p99.items()]
    response = api.as_("publisher").post("/models/resnet50/versions", json={
        "version": label, "precision": "fp16", "trt_version": "10.3", "engines": engines})
    assert response.status_code == 201, response.text


def test_gates_refuse_a_slower_engine_and_a_missing_architecture(seeded: Api) -> None:
    benchmarked(seeded, "10", {"sm_80": 4.0, "sm_90": 3.0})
    benchmarked(seeded, "11", {"sm_80": 6.0, "sm_90": 3.1})
    slower = start(seeded, {"candidate": "11", "baseline": "10", "steps": STEPS})
    assert slower.status_code == 422, slower.text
    failed = slower.json()["error"]["details"]
    assert [(d["check"], d["gpu_arch"]) for d in failed] == [("benchmark_p99", "sm_80")]
    assert failed[0]["ratio"] == 1.5
    # "5" has no sm_90 engine, where the baseline serves.
    missing = start(seeded, {"candidate": "5", "steps": STEPS})
    assert missing.status_code == 422
    assert [(d["check"], d["gpu_arch"]) for d in missing.json()["error"]["details"]] == [("engine", "sm_90")]
    # A looser limit lets the slower one through; an override lets the missing architecture through, audited.
    loose = start(seeded, {"candidate": "11", "baseline": "10", "steps": STEPS,
                           "gates": {"max_benchmark_p99_ratio": 1.6}})
    assert loose.status_code == 201, loose.text
    assert {e["check"] for e in loose.json()["gate_evidence"]} == {"engine", "benchmark_p99"}
    seeded.as_("admin").post(f"/models/resnet50/rollouts/{loose.json()['id']}/abort", json={})
    overridden = start(seeded, {"candidate": "5", "steps": STEPS, "override_gates": True, "reason": "hotfix"})
    assert overridden.status_code == 201, overridden.text
    assert overridden.json()["override_gates"] is True
    started = [e for e in seeded.get("/audit", params={"model": "resnet50"}).json()
               if e["action"] == "rollout.started"][0]
    assert "gates overridden" in started["reason"] and "sm_90" in started["reason"]


def test_a_burst_of_concurrent_starts_yields_one_rollout(seeded: Api) -> None:
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        statuses = list(pool.map(lambda _: start(seeded, {"candidate": "4", "steps": STEPS}, role="admin")
                                 .status_code, range(10)))
    assert sorted(statuses) == [201] + [409] * 9
    assert len(seeded.get("/models/resnet50/rollouts").json()) == 1


def test_a_single_step_at_100_is_a_promotion(seeded: Api) -> None:
    response = start(seeded, {"candidate": "4", "steps": [{"weight": 100}]})
    assert response.status_code == 201, response.text
    assert (response.json()["state"], response.json()["step_index"]) == ("succeeded", 1)
    traffic = seeded.get("/models/resnet50/traffic").json()
    assert traffic["default_version"] == "4" and traffic["created_by"] == f"rollout:{response.json()['id']}"
    assert seeded.traffic("resnet50", {"3": 100}, default="3").status_code == 200


def test_a_shadow_phase_mirrors_the_candidate_before_any_traffic_moves(seeded: Api) -> None:
    before = seeded.get("/models/resnet50/traffic").json()
    response = start(seeded, {"candidate": "4", "steps": STEPS, "shadow": {"percent": 12.5, "seconds": 60}})
    assert response.status_code == 201, response.text
    rollout = response.json()
    assert rollout["phase"] == "shadow" and rollout["shadow"] == {"percent": 12.5, "seconds": 60}
    live = seeded.get("/models/resnet50/traffic").json()
    assert live["shadow"] == {"version": "4", "percent": 12.5}
    assert live["splits"] == before["splits"] and live["created_by"] == f"rollout:{rollout['id']}"
    aborted = seeded.as_("release-manager").post(f"/models/resnet50/rollouts/{rollout['id']}/abort",
                                                 json={"reason": "changed my mind"})
    assert aborted.status_code == 200, aborted.text
    restored = seeded.get("/models/resnet50/traffic").json()
    assert restored["shadow"] == before["shadow"] and restored["splits"] == before["splits"]
