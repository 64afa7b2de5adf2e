"""The controller's step decision over architectures (pure: counts in, verdict out)."""

from __future__ import annotations

from control_plane.rollouts.analysis import AnalysisConfig, ArmCounts, Verdict
from control_plane.rollouts.controller import decide
from router.stats import LATENCY_BOUNDS_MS

CONFIG = AnalysisConfig(min_requests=100)


def arm(requests: int, errors: int = 0, bucket: int = 3) -> ArmCounts:
    buckets = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    buckets[bucket] = requests
    return ArmCounts.of(requests, errors, buckets)


def test_passes_only_when_every_architecture_both_serve_passes() -> None:
    both = decide({"sm_80": arm(500), "sm_90": arm(500)}, {"sm_80": arm(5000), "sm_90": arm(5000)},
                  elapsed_seconds=60, pause_seconds=30, config=CONFIG)
    assert both.verdict is Verdict.PASS and set(both.per_arch) == {"sm_80", "sm_90"}
    short = decide({"sm_80": arm(500), "sm_90": arm(50)}, {"sm_80": arm(5000), "sm_90": arm(5000)},
                   elapsed_seconds=60, pause_seconds=30, config=CONFIG)
    assert short.verdict is Verdict.CONTINUE and short.reason.startswith("sm_90:")


def test_fails_on_the_architecture_that_fails_and_names_it() -> None:
    slow = decide({"sm_80": arm(2000), "sm_90": arm(2000, bucket=12)}, {"sm_80": arm(5000), "sm_90": arm(5000)},
                  elapsed_seconds=60, pause_seconds=30, config=CONFIG)
    assert slow.verdict is Verdict.FAIL
    assert slow.reason.startswith("sm_90:") and "sm_80" not in slow.reason
    assert slow.per_arch["sm_80"]["verdict"] != "fail"


def test_an_architecture_only_the_candidate_serves_is_held_to_the_hard_limit_only() -> None:
    alone = decide({"sm_90": arm(500, errors=5)}, {"sm_80": arm(5000)}, elapsed_seconds=60, pause_seconds=0,
                   config=CONFIG)
    assert alone.verdict is Verdict.CONTINUE and "no GPU architecture" in alone.reason
    failing = decide({"sm_90": arm(40, errors=30)}, {"sm_80": arm(5000)}, elapsed_seconds=1, pause_seconds=0,
                     config=CONFIG)
    assert failing.verdict is Verdict.FAIL and "hard limit" in failing.reason


def test_evidence_is_json_safe() -> None:
    import json

    early = decide({"sm_80": arm(3)}, {"sm_80": arm(3)}, elapsed_seconds=1, pause_seconds=60, config=CONFIG)
    json.dumps(early.per_arch, allow_nan=False)  # unbounded intervals become null, not Infinity
