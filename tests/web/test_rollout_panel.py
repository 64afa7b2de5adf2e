"""The rollout panel's form and evidence, from the API's shapes (the browser test drives the real thing)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from control_plane.rollouts.analysis import AnalysisConfig, ArmCounts, judge
from router.stats import LATENCY_BOUNDS_MS
from web import rollout as panel

NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


def _form(**values: str) -> panel.StartForm:
    return panel.read_start({"candidate": "4", "baseline": "3", **values})


def test_presets_end_at_100_percent_without_a_pause_and_increase() -> None:
    for preset in panel.PRESETS:
        steps = preset.steps()
        weights = [s["weight"] for s in steps]
        assert weights == sorted(set(weights)) and weights[-1] == 100
        assert steps[-1]["pause_seconds"] == 0 and all(s["pause_seconds"] > 0 for s in steps[:-1])
    body, errors = panel.start_body(_form(plan="cautious", reason="fp16 engine"))
    assert errors == {} and [s["weight"] for s in body["steps"]] == [1, 5, 10, 25, 50, 100]
    assert body["baseline"] == "3" and "analysis" not in body


def test_custom_steps_skip_blank_rows_and_keep_pools_and_name_the_row_of_an_error() -> None:
    start = _form(plan="custom", **{"step-0-weight": "5", "step-0-pause": "60", "step-0-pools": "h100, a100",
                                    "step-2-weight": "100"})
    body, errors = panel.start_body(start)
    assert errors == {}
    assert body["steps"] == [{"weight": 5.0, "pause_seconds": 60, "pools": ["h100", "a100"]},
                             {"weight": 100.0, "pause_seconds": 0}]
    # The API's path steps[1] is the form's third row (the second was blank).
    assert panel.errors_from_details([{"field": "steps[1].weight", "reason": "must increase"}], start) == {
        "step-2-weight": ["must increase"]}
    assert panel.field_for("analysis.max_p99_ratio", start) == "max_p99_ratio"

    start = _form(plan="custom", **{"step-1-weight": "ten", "step-1-pause": "1.5"}, min_requests="many")
    _, errors = panel.start_body(start)
    assert set(errors) == {"step-1-weight", "step-1-pause", "min_requests"}
    _, errors = panel.start_body(_form(plan="custom"))
    assert "steps" in errors
    _, errors = panel.start_body(_form(plan="standard", override_gates="1"))
    assert errors == {"reason": ["say why the gates are overridden; it is kept in the audit log"]}


def test_gate_evidence_is_found_in_a_refusal_and_nothing_else_is_taken_for_it() -> None:
    details = [{"field": "gates", "reason": "slower", "gpu_arch": "sm_80", "check": "benchmark_p99", "passed": False,
                "detail": "trtexec p99 20 ms against 9.8 ms"}]
    assert [g["gpu_arch"] for g in panel.gate_evidence(details)] == ["sm_80"]
    assert panel.gate_evidence([{"field": "candidate", "reason": "unknown"}]) == []
    assert panel.gate_evidence(None) == []


def test_the_timeline_marks_the_current_step_with_its_pause_left() -> None:
    rollout = {"state": "running", "step_index": 1, "step_started_at": NOW - timedelta(seconds=50),
               "steps": [{"weight": 5, "pause_seconds": 60}, {"weight": 25, "pause_seconds": 120, "pools": ["h100"]},
                         {"weight": 100, "pause_seconds": 0}]}
    steps = panel.timeline(rollout, now=NOW)
    assert [s.state for s in steps] == ["done", "current", "next"]
    assert steps[1].left == "1 min 10 s of pause left" and steps[1].pools == "h100"
    assert [s.state for s in panel.timeline({**rollout, "state": "succeeded", "step_index": 3}, now=NOW)] == ["done"] * 3
    rolled_back = panel.timeline({**rollout, "state": "rolled_back"}, now=NOW)
    assert [s.state for s in rolled_back] == ["done", "current", "next"] and rolled_back[1].left == ""


def _arm(requests: int, errors: int, at_ms: float) -> ArmCounts:
    buckets = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    buckets[LATENCY_BOUNDS_MS.index(at_ms)] = requests
    return ArmCounts.of(requests, errors, buckets)


def test_evidence_rows_come_from_real_judgements_and_say_when_data_is_short() -> None:
    failing = judge(_arm(2000, 200, 5.0), _arm(20000, 20, 5.0), elapsed_seconds=30, pause_seconds=60)
    early = judge(_arm(40, 0, 5.0), _arm(400, 0, 5.0), elapsed_seconds=5, pause_seconds=60,
                  config=AnalysisConfig(min_requests=200))
    verdict = {"verdict": "fail", "per_arch": {"sm_90": failing.as_dict(), "sm_80": early.as_dict()}}
    rows = {r.gpu_arch: r for r in panel.arch_rows(verdict)}
    assert rows["sm_90"].verdict == "failed" and rows["sm_90"].tone == "bad"
    assert rows["sm_90"].error_rate.startswith("+9.90 pp (") and "limit 0 pp" in rows["sm_90"].error_rate
    assert "error rate up" in rows["sm_90"].note
    assert not rows["sm_80"].enough
    assert rows["sm_80"].note == "not enough data yet: the candidate served 40 of the 200 requests a step needs"
    assert rows["sm_80"].requests == "40 candidate · 400 baseline"
    assert panel.arch_rows(None) == []


def test_a_shadow_phase_goes_into_the_start_request_and_its_refusals_find_their_fields() -> None:
    start = _form(plan="fast", reason="int8", shadow_percent="10", shadow_seconds="300", min_top1_agreement="0.995")
    body, errors = panel.start_body(start)
    assert errors == {}
    assert body["shadow"] == {"percent": 10.0, "seconds": 300} and body["analysis"] == {"min_top1_agreement": 0.995}
    _, errors = panel.start_body(_form(plan="fast", shadow_percent="ten"))
    assert set(errors) == {"shadow_percent", "shadow_seconds"}
    assert panel.errors_from_details([{"field": "shadow.percent", "reason": "must be greater than 0"}], start) == {
        "shadow_percent": ["must be greater than 0"]}
    assert panel.field_for("analysis.max_abs_error", start) == "max_abs_error"
    body, _ = panel.start_body(_form(plan="fast"))
    assert "shadow" not in body
