"""The step judgement: known answers, the A/A bound under continuous looks, bad candidates, bad parameters."""

from __future__ import annotations

import math

import numpy as np
import pytest

from control_plane.rollouts import analysis
from control_plane.rollouts.analysis import (
    AnalysisConfig,
    AnalysisError,
    ArmCounts,
    Check,
    UserTotals,
    Verdict,
    judge,
)
from router.stats import LATENCY_BOUNDS_MS

NB = len(LATENCY_BOUNDS_MS) + 1
BOUNDS_S = np.array(LATENCY_BOUNDS_MS) / 1000
INDEPENDENT = AnalysisConfig(variance_inflation=1.0)


def histogram(latencies_s: np.ndarray) -> list[int]:
    return [int(x) for x in np.bincount(np.searchsorted(BOUNDS_S, latencies_s), minlength=NB)]


def arm(requests: int, errors: int, rng: np.random.Generator, *, scale: float = 1.0) -> ArmCounts:
    return ArmCounts.of(requests, errors, histogram(0.020 * scale * rng.lognormal(0.0, 0.35, requests)))


def flat(requests: int, errors: int = 0, bucket: int = 10) -> ArmCounts:
    """All requests in one bucket: latency plays no part."""
    buckets = [0] * NB
    buckets[bucket] = requests
    return ArmCounts.of(requests, errors, buckets)


def evidence(judgement: analysis.Judgement, check: Check) -> analysis.Evidence:
    return next(e for e in judgement.evidence if e.check is check)


def log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


# -- known answers --------------------------------------------------------------------------------


def test_error_e_value_matches_a_hand_computation() -> None:
    """3 of 10 candidate requests fail, none of 10 baseline ones; margin 0, so the null's best fit is the pooled 15%."""
    a, b = analysis._ERROR_PRIOR
    mixture = (log_beta(a + 3, b + 7) - log_beta(a, b)) + (log_beta(a, b + 10) - log_beta(a, b))
    best_null = 3 * math.log(0.15) + 17 * math.log(0.85)
    judgement = judge(flat(10, 3), flat(10, 0), elapsed_seconds=0, pause_seconds=0, config=INDEPENDENT)
    found = evidence(judgement, Check.ERROR_RATE)
    assert found.log_e == pytest.approx(mixture - best_null, rel=1e-9)
    assert found.statistic == pytest.approx(30.0)
    assert found.log_e_threshold == pytest.approx(math.log(1 / 0.025))


def test_error_e_value_with_a_margin_solves_the_boundary_fit() -> None:
    """With margin m the null's best fit sits on p_c = p_b + m where the log-likelihood's slope is zero."""
    m = 0.05
    a, b = analysis._ERROR_PRIOR
    log_e = analysis._log_e_increase(30.0, 70.0, 10.0, 190.0, m)
    # Hand check: find x on the boundary by scanning a fine grid, independent of the bisection.
    grid = np.linspace(0.0001, 0.9499, 200_000)
    loglik = 30 * np.log(grid + m) + 70 * np.log(1 - grid - m) + 10 * np.log(grid) + 190 * np.log(1 - grid)
    mixture = (log_beta(a + 30, b + 70) - log_beta(a, b)) + (log_beta(a + 10, b + 190) - log_beta(a, b))
    assert log_e == pytest.approx(mixture - loglik.max(), abs=1e-6)
    # A margin at least the observed increase leaves no evidence against the null.
    assert analysis._log_e_increase(30.0, 70.0, 10.0, 190.0, 0.25) <= 0


def test_design_effect_from_per_user_totals() -> None:
    """Two candidate users of 10 requests, one failing 5 times: sum (e_u - p n_u)^2 = 12.5 over 20 * .25 * .75."""
    candidate = ArmCounts.of(20, 5, flat(20).buckets, UserTotals(2, 200, 25, 50))
    baseline = ArmCounts.of(20, 0, flat(20).buckets, UserTotals(1, 400, 0, 0))
    judgement = judge(candidate, baseline, elapsed_seconds=0, pause_seconds=0)
    assert evidence(judgement, Check.ERROR_RATE).design_effect == pytest.approx(12.5 / 3.75)
    # Without the totals the configured inflation is used instead.
    plain = judge(flat(20, 5), flat(20), elapsed_seconds=0, pause_seconds=0)
    assert evidence(plain, Check.ERROR_RATE).design_effect == AnalysisConfig().variance_inflation


def test_latency_interpolates_inside_a_bucket() -> None:
    buckets = [0] * NB
    i = LATENCY_BOUNDS_MS.index(15.0)  # bucket (10, 15]
    buckets[i] = 100
    buckets[i + 1] = 10  # (15, 20]
    # 10 above 15 ms; 60 above means half of the (10, 15] bucket too: 12.5 ms.
    assert analysis._latency_with_count_above(buckets, 60, upper=True) == pytest.approx(12.5)
    assert analysis._latency_with_count_above(buckets, 10, upper=True) == pytest.approx(15.0)
    buckets[-1] = 5  # above the top bound nothing is known
    assert analysis._latency_with_count_above(buckets, 2, upper=True) == math.inf
    assert analysis._latency_with_count_above(buckets, 2, upper=False) == LATENCY_BOUNDS_MS[-1]


def test_p99_bounds_bracket_the_observed_p99() -> None:
    rng = np.random.default_rng(3)
    data = arm(20_000, 0, rng)
    low, high = analysis._quantile_bounds(data.buckets, 1.0, 0.0125)
    p99 = data.summary()["p99_ms"]
    assert low < p99 < high
    assert high / low < 1.5  # 20,000 requests pin the p99 down well
    # 50 requests cannot show that under 1% of them lie above any latency: no upper bound yet.
    assert analysis._quantile_bounds(arm(50, 0, rng).buckets, 1.0, 0.0125)[1] == math.inf


# -- the A/A bound under continuous monitoring ----------------------------------------------------


def test_identical_versions_looked_at_every_5_s_rarely_fail() -> None:
    """200 seeded A/A steps, 2 minutes each, judged every 5 s: failures stay under alpha.

    A fixed-sample test repeated at every look would fail far more often; the
    same loop with a naive 5% z-test shows the simulation can tell.
    """
    rng = np.random.default_rng(20261128)
    runs, looks, alpha = 200, 24, 0.05
    failed = naive_failed = 0
    for _ in range(runs):
        c_req = c_err = b_req = b_err = 0
        c_hist, b_hist = np.zeros(NB, dtype=np.int64), np.zeros(NB, dtype=np.int64)
        naive = False
        for _ in range(looks):
            nc, nb = rng.poisson(100), rng.poisson(900)  # 20 and 180 requests/s
            c_req, b_req = c_req + nc, b_req + nb
            c_err, b_err = c_err + rng.binomial(nc, 0.02), b_err + rng.binomial(nb, 0.02)
            c_hist += histogram(0.020 * rng.lognormal(0.0, 0.35, nc))
            b_hist += histogram(0.020 * rng.lognormal(0.0, 0.35, nb))
            candidate = ArmCounts.of(c_req, c_err, [int(x) for x in c_hist])
            baseline = ArmCounts.of(b_req, b_err, [int(x) for x in b_hist])
            pc, pb = c_err / c_req, b_err / b_req
            pooled = (c_err + b_err) / (c_req + b_req)
            se = math.sqrt(pooled * (1 - pooled) * (1 / c_req + 1 / b_req)) or 1.0
            naive = naive or (pc - pb) / se > 1.645
            verdict = judge(candidate, baseline, elapsed_seconds=0, pause_seconds=0, config=INDEPENDENT,
                            intervals=False).verdict
            if verdict is Verdict.FAIL:
                failed += 1
                break
        naive_failed += naive
    assert failed / runs <= alpha
    assert naive_failed / runs > alpha  # the naive repeated test breaks the bound in the same data


# -- bad candidates --------------------------------------------------------------------------------


def test_a_candidate_failing_ten_percent_fails_on_error_rate() -> None:
    rng = np.random.default_rng(1)
    judgement = judge(arm(1000, 100, rng), arm(9000, 9, rng), elapsed_seconds=50, pause_seconds=60)
    assert judgement.verdict is Verdict.FAIL
    found = evidence(judgement, Check.ERROR_RATE)
    assert found.verdict is Verdict.FAIL
    assert found.interval is not None and found.interval[0] > 0 and found.interval[0] <= found.statistic <= found.interval[1]
    assert "error rate up" in judgement.reason
    assert evidence(judgement, Check.P99_RATIO).verdict is Verdict.CONTINUE


def test_a_candidate_three_times_slower_fails_on_p99() -> None:
    rng = np.random.default_rng(2)
    judgement = judge(arm(1000, 1, rng, scale=3.0), arm(9000, 9, rng), elapsed_seconds=50, pause_seconds=60)
    assert judgement.verdict is Verdict.FAIL
    found = evidence(judgement, Check.P99_RATIO)
    assert found.verdict is Verdict.FAIL
    assert found.statistic is not None and 2.5 < found.statistic < 3.5
    assert found.interval is not None and found.interval[0] > 1.25
    assert evidence(judgement, Check.ERROR_RATE).verdict is Verdict.CONTINUE


def test_hard_limit_fires_on_20_requests_at_60_percent_errors() -> None:
    judgement = judge(flat(20, 12), flat(0), elapsed_seconds=1, pause_seconds=60)
    assert judgement.verdict is Verdict.FAIL
    assert judgement.evidence[0].check is Check.HARD_ERROR_RATE
    assert "12 of 20" in judgement.reason
    # One request fewer is not enough for the hard limit (and nothing else can judge 19 requests alone).
    assert judge(flat(19, 12), flat(0), elapsed_seconds=1, pause_seconds=60).verdict is Verdict.CONTINUE


def test_a_good_candidate_passes_only_after_pause_and_min_requests() -> None:
    rng = np.random.default_rng(4)
    good, base = arm(1000, 1, rng), arm(9000, 9, rng)
    assert judge(good, base, elapsed_seconds=59, pause_seconds=60).verdict is Verdict.CONTINUE
    passed = judge(good, base, elapsed_seconds=60, pause_seconds=60)
    assert passed.verdict is Verdict.PASS
    assert passed.as_dict()["verdict"] == "pass"
    few = judge(arm(150, 0, rng), base, elapsed_seconds=600, pause_seconds=60)
    assert few.verdict is Verdict.CONTINUE
    assert "150 of 200" in few.reason


# -- bad parameters --------------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [
    ("max_error_rate_increase_pp", -0.1),
    ("max_error_rate_increase_pp", math.nan),
    ("max_p99_ratio", 0.9),
    ("min_requests", 0),
    ("min_requests", 2.5),
    ("alpha", 0.0),
    ("alpha", 1.0),
    ("variance_inflation", 0.5),
    ("hard_max_error_rate", 0.0),
    ("hard_min_requests", 0),
])
def test_bad_config_names_the_field(field: str, value: float) -> None:
    with pytest.raises(AnalysisError) as raised:
        AnalysisConfig(**{field: value})  # type: ignore[arg-type]
    assert raised.value.field == field
    assert str(raised.value).startswith(f"{field}: ")


def test_bad_counts_name_the_field() -> None:
    with pytest.raises(AnalysisError, match="^errors: 5 errors exceed 4 requests"):
        ArmCounts.of(4, 5, [0] * NB)
    with pytest.raises(AnalysisError, match=f"^buckets: has 3 counts, expected {NB}"):
        ArmCounts.of(4, 0, [0, 0, 4])
    with pytest.raises(AnalysisError, match="^requests: "):
        ArmCounts.of(-1, 0, [0] * NB)
    with pytest.raises(AnalysisError, match="^users.sum_errors_sq: "):
        UserTotals(1, 1.0, math.inf, 0.0)
    with pytest.raises(AnalysisError, match="^elapsed_seconds: "):
        judge(flat(1), flat(1), elapsed_seconds=-1, pause_seconds=0)
    with pytest.raises(AnalysisError, match="^pause_seconds: "):
        judge(flat(1), flat(1), elapsed_seconds=1, pause_seconds=math.nan)


# -- the shadow phase ---------------------------------------------------------------------------

BOUNDS = (0.0, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # the router's error_bounds


def parity(rows: int, agree: int, *, mismatched: int = 0, above_0_1: int = 0) -> analysis.ParityCounts:
    histogram = [0] * (len(BOUNDS) + 1)
    histogram[5] = rows - above_0_1  # errors in (1e-4, 1e-3]
    histogram[8] = above_0_1  # in (0.1, 1.0]
    return analysis.ParityCounts(rows, mismatched, rows, agree, BOUNDS, tuple(histogram))


def test_parity_at_the_limit_looked_at_every_40_rows_rarely_fails() -> None:
    """Worst null (agreement exactly the limit), 500 phases of 4,000 rows looked at every 40 rows:
    the share ever failed stays under alpha although each phase is checked 100 times (about 1% seen)."""
    rng = np.random.default_rng(20261128)
    config = analysis.ParityConfig(min_top1_agreement=0.99, alpha=0.05, variance_inflation=1.0)
    failed = 0
    for _ in range(500):
        agree = rows = 0
        for _ in range(100):
            rows += 40
            agree += int(rng.binomial(40, 0.99))
            if analysis.judge_parity(parity(rows, agree), elapsed_seconds=0, phase_seconds=60,
                                     config=config).verdict is Verdict.FAIL:
                failed += 1
                break
    assert failed / 500 <= 0.05, failed


def test_parity_four_points_under_the_limit_is_caught_within_2000_rows() -> None:
    rng = np.random.default_rng(7)
    config = analysis.ParityConfig(min_top1_agreement=0.99, alpha=0.05)  # design effect 2, as by default
    caught = 0
    for _ in range(200):
        agree = int(rng.binomial(2000, 0.95))
        caught += analysis.judge_parity(parity(2000, agree), elapsed_seconds=0, phase_seconds=60,
                                        config=config).verdict is Verdict.FAIL
    assert caught / 200 >= 0.95, caught


def test_parity_fails_at_once_on_a_shape_mismatch_and_on_large_errors() -> None:
    config = analysis.ParityConfig(max_abs_error=0.01)
    shape = analysis.judge_parity(parity(10, 10, mismatched=1), elapsed_seconds=0, phase_seconds=60, config=config)
    assert shape.verdict is Verdict.FAIL and "shape" in shape.reason
    errors = analysis.judge_parity(parity(1000, 1000, above_0_1=100), elapsed_seconds=0, phase_seconds=60,
                                   config=config)
    assert errors.verdict is Verdict.FAIL and "max abs error over 0.01" in errors.reason
    few = analysis.judge_parity(parity(1000, 1000, above_0_1=5), elapsed_seconds=90, phase_seconds=60,
                                config=config)
    assert few.verdict is Verdict.PASS, few.reason


def test_parity_passes_only_after_the_phase_and_enough_comparisons() -> None:
    config = analysis.ParityConfig(min_compared=200)
    assert analysis.judge_parity(parity(500, 500), elapsed_seconds=30, phase_seconds=60,
                                 config=config).verdict is Verdict.CONTINUE
    assert analysis.judge_parity(parity(150, 150), elapsed_seconds=90, phase_seconds=60,
                                 config=config).verdict is Verdict.CONTINUE
    assert analysis.judge_parity(parity(500, 499), elapsed_seconds=90, phase_seconds=60,
                                 config=config).verdict is Verdict.PASS
