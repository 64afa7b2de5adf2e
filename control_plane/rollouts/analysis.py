"""The judgement of one rollout step: candidate against baseline on one GPU architecture.

Pure functions over cumulative counts since the step began (no I/O, no clock):
the controller calls :func:`judge` every few seconds with what the routers
reported and acts on the :class:`Verdict`. Looking that often is safe because
every check is *anytime-valid*: the chance that an A/A step (candidate no worse
than allowed) is ever failed, however often and however long it is looked at,
stays below ``alpha``.

Method
------
Each check is an e-process (a nonnegative process whose expectation stays at
most 1 under the null at every stopping time), so by Ville's inequality
``P(sup_t E_t >= 1/alpha) <= alpha``. The e-processes are "mixture likelihood
over maximum null likelihood" ratios (Robbins' method of mixtures; the
composite-null form is the universal-inference e-process of Wasserman, Ramdas
& Balakrishnan, PNAS 2020): the numerator is a Beta-Bernoulli mixture, which is
a product of predictive probabilities and so a likelihood the data could have
had; dividing by the maximum of the likelihood over the null bounds the ratio
by a test martingale for every null parameter at once. Unlike an mSPRT on a
normal approximation (Johari et al., 2017/2022), this stays exact for rare
events (0.1% error rates, the 1% tail), which is where canaries live.

- **Error rate** (``max_error_rate_increase_pp`` = m). Null: ``p_c - p_b <= m``.
  ``E = Beta-mix(candidate) * Beta-mix(baseline) / max_{p_c <= p_b + m} L``; the
  constrained maximum is a one-dimensional concave problem solved by bisection.
  Inverting the test in ``m`` gives the reported anytime-valid interval for the
  increase. Budget ``alpha / 2``.
- **p99 latency** (``max_p99_ratio`` = r). Null: ``Q_c(0.99) <= r * Q_b(0.99)``.
  The baseline's 0.99 quantile gets an anytime-valid upper bound ``U_b`` (the
  latency above which the baseline's share is provably under 1%, budget
  ``alpha / 4``); the candidate's gets a lower bound ``L_c`` (the latency above
  which the candidate's share is provably over 1%, budget ``alpha / 4``). The
  check fails when ``L_c > r * U_b``. Under the null the fixed, unknown point
  ``r * Q_b(0.99)`` is only crossed if one of the two bounds is wrong, so the
  error is at most ``alpha / 2`` (the bounds are the quantile confidence
  sequences of Howard & Ramdas, Bernoulli 2022, from the share above a point).
  This is the "share of candidate requests over the baseline's p99, the ratio
  folded in" test, with the baseline's uncertainty accounted for.
- **Hard limit**: a candidate failing more than ``hard_max_error_rate`` of at
  least ``hard_min_requests`` requests fails at once, whatever the baseline.
  It is an absolute rule, outside the ``alpha`` budget.

A step PASSes only when no check failed, ``elapsed_seconds >= pause_seconds``
and the candidate served ``min_requests``; until then it is CONTINUE.

Assumptions, and how they are handled
-------------------------------------
- *Users, not requests, are randomized.* The routing hash sends all of a
  user's requests to one version, so requests are clustered and a user with a
  bad input fails many times. Counts are divided by a design effect ``D``
  before entering the likelihoods (the likelihood raised to ``1/D``, i.e. ``n/D``
  effective requests, Kish's effective sample size). With per-user aggregates
  (``UserTotals``: sums over users of ``n_u^2``, ``e_u^2``, ``n_u e_u``) the
  error check estimates ``D`` as the cluster-robust (ratio-estimator) variance
  over the binomial one, pooled over both arms and never below 1; this is a
  plug-in, consistent rather than exact. Without them, and always for latency
  (routers keep no per-user histograms), ``D`` is ``variance_inflation``: a
  stated assumption (default 2: users sending a handful of requests with
  moderately correlated outcomes), conservative only if it covers the real
  design effect. The simulation in ``tests/bench/sim_rollout_analysis.py``
  checks it under clustered traffic.
- *Stationarity within a step*: outcomes are exchangeable over time within the
  step (a step's counts start when its weight was applied).
- *Latency inside a bucket* is taken as uniform between the bucket's bounds
  (as ``router.stats.percentile_ms`` does); the router's buckets are 25-100%
  wide, so quantile bounds inside one bucket are interpolations.
- Several steps are several tests: a rollout of k analysed steps that wants
  ``alpha`` over the whole rollout passes ``alpha / k`` per step.
"""

from __future__ import annotations

import enum
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from router.stats import LATENCY_BOUNDS_MS, percentile_ms

__all__ = [
    "AnalysisConfig",
    "AnalysisError",
    "ArmCounts",
    "Check",
    "Evidence",
    "Judgement",
    "ParityConfig",
    "ParityCounts",
    "UserTotals",
    "Verdict",
    "judge",
    "judge_parity",
]

QUANTILE = 0.99
_TAIL = 1 - QUANTILE
# Beta priors of the mixtures: where they put their mass is where the tests are
# most sensitive (error rates of a few percent; tail shares of a few percent).
# Tuned with the simulation script; any prior keeps the tests valid.
_ERROR_PRIOR = (0.5, 50.0)
_TAIL_PRIOR = (1.0, 30.0)
# Disagreements of an engine rebuilt in lower precision: a fraction of a percent to a few percent.
_DISAGREEMENT_PRIOR = (0.5, 20.0)


class AnalysisError(ValueError):
    """A bad parameter or count; ``field`` names it (the API answers 422 with it)."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name
        self.reason = reason


class Verdict(enum.Enum):
    CONTINUE = "continue"  # not enough evidence yet, or the pause is not over
    PASS = "pass"  # the step may advance
    FAIL = "fail"  # roll back


class Check(enum.Enum):
    HARD_ERROR_RATE = "hard_error_rate"
    ERROR_RATE = "error_rate"
    P99_RATIO = "p99_ratio"
    MIN_EVIDENCE = "min_evidence"
    OUTPUT_SHAPE = "output_shape"
    TOP1_AGREEMENT = "top1_agreement"
    MAX_ABS_ERROR = "max_abs_error"


@dataclass(frozen=True)
class UserTotals:
    """Per-user sums of one arm since the step began (``n_u`` requests, ``e_u`` errors of user u)."""

    users: int
    sum_requests_sq: float
    sum_errors_sq: float
    sum_requests_errors: float

    def __post_init__(self) -> None:
        for name in ("users", "sum_requests_sq", "sum_errors_sq", "sum_requests_errors"):
            _finite_non_negative(f"users.{name}", getattr(self, name))


@dataclass(frozen=True)
class ArmCounts:
    """Cumulative counts of one version on one GPU architecture since the step began.

    ``buckets`` is the router's latency histogram (``router.stats`` layout:
    ``len(LATENCY_BOUNDS_MS) + 1`` counts, the last above the top bound).
    """

    requests: int
    errors: int
    buckets: tuple[int, ...]
    users: UserTotals | None = None

    def __post_init__(self) -> None:
        _finite_non_negative("requests", self.requests)
        _finite_non_negative("errors", self.errors)
        if self.errors > self.requests:
            raise AnalysisError("errors", f"{self.errors} errors exceed {self.requests} requests")
        if len(self.buckets) != len(LATENCY_BOUNDS_MS) + 1:
            raise AnalysisError("buckets", f"has {len(self.buckets)} counts, expected {len(LATENCY_BOUNDS_MS) + 1}")
        for count in self.buckets:
            _finite_non_negative("buckets", count)

    @classmethod
    def of(cls, requests: int, errors: int, buckets: Sequence[int], users: UserTotals | None = None) -> ArmCounts:
        return cls(requests, errors, tuple(buckets), users)

    def summary(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "p99_ms": percentile_ms(self.buckets, QUANTILE)}


@dataclass(frozen=True)
class AnalysisConfig:
    """The analysis of a rollout (DESIGN "Rollouts": ``analysis``), with the defaults the simulation supports."""

    # An increase the candidate may have over the baseline; 0: any increase the data proves fails it.
    max_error_rate_increase_pp: float = 0.0
    max_p99_ratio: float = 1.25
    min_requests: int = 200
    alpha: float = 0.05  # bound on the chance of failing a step whose candidate is within the limits
    variance_inflation: float = 2.0  # design effect assumed when per-user totals are missing
    hard_max_error_rate: float = 0.5
    hard_min_requests: int = 20

    def __post_init__(self) -> None:
        if not (_finite(self.max_error_rate_increase_pp) and 0 <= self.max_error_rate_increase_pp < 100):
            raise AnalysisError("max_error_rate_increase_pp", "must be a number of percentage points in [0, 100)")
        if not (_finite(self.max_p99_ratio) and self.max_p99_ratio >= 1):
            raise AnalysisError("max_p99_ratio", "must be a ratio of at least 1")
        if not (isinstance(self.min_requests, int) and self.min_requests >= 1):
            raise AnalysisError("min_requests", "must be a whole number of at least 1")
        if not (_finite(self.alpha) and 0 < self.alpha < 1):
            raise AnalysisError("alpha", "must be a probability strictly between 0 and 1")
        if not (_finite(self.variance_inflation) and self.variance_inflation >= 1):
            raise AnalysisError("variance_inflation", "must be at least 1 (1: requests are independent)")
        if not (_finite(self.hard_max_error_rate) and 0 < self.hard_max_error_rate <= 1):
            raise AnalysisError("hard_max_error_rate", "must be a fraction in (0, 1]")
        if not (isinstance(self.hard_min_requests, int) and self.hard_min_requests >= 1):
            raise AnalysisError("hard_min_requests", "must be a whole number of at least 1")


@dataclass(frozen=True)
class Evidence:
    """One check's outcome: what was measured, against what, on how much data."""

    check: Check
    verdict: Verdict
    statistic: float | None  # observed: increase in pp, p99 ratio, error rate, requests
    threshold: float  # the configured limit it is judged against
    interval: tuple[float, float] | None  # anytime-valid interval of the statistic's true value
    log_e: float | None = None  # log of the e-value behind the decision (FAIL at >= log_e_threshold)
    log_e_threshold: float | None = None
    design_effect: float | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.check.value,
            "verdict": self.verdict.value,
            "statistic": self.statistic,
            "threshold": self.threshold,
            "interval": list(self.interval) if self.interval else None,
            "log_e": self.log_e,
            "log_e_threshold": self.log_e_threshold,
            "design_effect": self.design_effect,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reason: str
    evidence: tuple[Evidence, ...]
    candidate: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "reason": self.reason,
            "candidate": self.candidate,
            "baseline": self.baseline,
            "evidence": [e.as_dict() for e in self.evidence],
        }


def judge(
    candidate: ArmCounts,
    baseline: ArmCounts,
    *,
    elapsed_seconds: float,
    pause_seconds: float,
    config: AnalysisConfig | None = None,
    intervals: bool = True,
) -> Judgement:
    """The verdict on a step from the cumulative counts since it began.

    ``intervals=False`` leaves out the parts of the evidence the verdict does
    not depend on (the error-rate interval, the p99 ratio's upper end): the
    same verdict, several times faster, for simulations.
    """
    config = config or AnalysisConfig()
    if not (_finite(elapsed_seconds) and elapsed_seconds >= 0):
        raise AnalysisError("elapsed_seconds", "must be a non-negative number of seconds")
    if not (_finite(pause_seconds) and pause_seconds >= 0):
        raise AnalysisError("pause_seconds", "must be a non-negative number of seconds")

    evidence = [_hard_error_rate(candidate, config)]
    if evidence[0].verdict is not Verdict.FAIL:
        evidence.append(_error_rate(candidate, baseline, config, intervals))
        evidence.append(_p99_ratio(candidate, baseline, config, intervals))
    sides = {"candidate": candidate.summary(), "baseline": baseline.summary()}

    failed = [e for e in evidence if e.verdict is Verdict.FAIL]
    if failed:
        return Judgement(Verdict.FAIL, "; ".join(e.detail for e in failed), tuple(evidence), **sides)
    waiting = []
    if elapsed_seconds < pause_seconds:
        waiting.append(f"pause: {elapsed_seconds:.0f} s of {pause_seconds:.0f} s")
    if candidate.requests < config.min_requests:
        waiting.append(f"candidate served {candidate.requests} of {config.min_requests} requests")
    ready = Evidence(
        Check.MIN_EVIDENCE, Verdict.CONTINUE if waiting else Verdict.PASS, float(candidate.requests),
        float(config.min_requests), None, detail="; ".join(waiting) or "pause served and minimum requests reached",
    )
    evidence.append(ready)
    if waiting:
        return Judgement(Verdict.CONTINUE, ready.detail, tuple(evidence), **sides)
    return Judgement(Verdict.PASS, "no check failed; " + ready.detail, tuple(evidence), **sides)


@dataclass(frozen=True)
class ParityCounts:
    """What the routers compared between the candidate (as shadow) and the primary on one GPU architecture.

    Summed over the outputs: ``top1_*`` over rows of outputs with more than one
    element per row, ``histogram`` of per-(request, output) max abs error in the
    router's ``error_bounds`` layout (bucket i holds errors in
    ``(bounds[i-1], bounds[i]]``, the last one above the top bound).
    """

    compared: int
    mismatched: int  # shape or datatype mismatches, and outputs missing from the shadow's answer
    top1_rows: int
    top1_agree: int
    error_bounds: tuple[float, ...]
    histogram: tuple[int, ...]

    def __post_init__(self) -> None:
        for name in ("compared", "mismatched", "top1_rows", "top1_agree"):
            _finite_non_negative(name, getattr(self, name))
        if self.top1_agree > self.top1_rows:
            raise AnalysisError("top1_agree", f"{self.top1_agree} agreeing rows exceed {self.top1_rows} rows")
        for count in self.histogram:
            _finite_non_negative("histogram", count)

    def above(self, limit: float) -> int:
        """Comparisons whose max abs error is certainly over ``limit`` (their bucket starts at or above it)."""
        return sum(count for i, count in enumerate(self.histogram) if i > 0 and self.error_bounds[i - 1] >= limit)


@dataclass(frozen=True)
class ParityConfig:
    """The shadow phase's limits (DESIGN "Rollouts": ``analysis.min_top1_agreement``, ``max_abs_error``)."""

    min_top1_agreement: float = 0.99
    max_abs_error: float | None = None  # None: not judged
    min_compared: int = 200
    alpha: float = 0.05
    variance_inflation: float = 2.0

    def __post_init__(self) -> None:
        if not (_finite(self.min_top1_agreement) and 0 <= self.min_top1_agreement <= 1):
            raise AnalysisError("min_top1_agreement", "must be a fraction in [0, 1]")
        if self.max_abs_error is not None and not (_finite(self.max_abs_error) and self.max_abs_error >= 0):
            raise AnalysisError("max_abs_error", "must be a non-negative number")
        if not (isinstance(self.min_compared, int) and self.min_compared >= 1):
            raise AnalysisError("min_requests", "must be a whole number of at least 1")
        if not (_finite(self.alpha) and 0 < self.alpha < 1):
            raise AnalysisError("alpha", "must be a probability strictly between 0 and 1")
        if not (_finite(self.variance_inflation) and self.variance_inflation >= 1):
            raise AnalysisError("variance_inflation", "must be at least 1 (1: requests are independent)")


def judge_parity(counts: ParityCounts, *, elapsed_seconds: float, phase_seconds: float,
                 config: ParityConfig | None = None) -> Judgement:
    """The verdict on a shadow phase from what was compared since it began.

    - A shape or datatype mismatch, or a missing output, fails at once: the
      engine answers a different contract, no statistics needed.
    - Top-1 agreement: null "the disagreement share is at most 1 - m"; the same
      mixture-over-maximum-null e-process as the error rate (Beta-Bernoulli
      mixture over the constrained maximum likelihood), counts divided by the
      design effect ``variance_inflation`` since a user's requests are alike.
      Anytime-valid: the controller may look every tick. Budget ``alpha / 2``.
    - Max abs error (when limited): null "at most 1% of comparisons exceed the
      limit" (the p99 of per-request max abs error is within it), the tail test
      of the latency check on the comparisons certainly above the limit.
      Budget ``alpha / 2``.
    PASS needs the phase's time served, ``min_compared`` comparisons and no failure.
    """
    config = config or ParityConfig()
    if not (_finite(elapsed_seconds) and elapsed_seconds >= 0):
        raise AnalysisError("elapsed_seconds", "must be a non-negative number of seconds")
    threshold = math.log(2 / config.alpha)
    d = config.variance_inflation
    evidence = [Evidence(
        Check.OUTPUT_SHAPE, Verdict.FAIL if counts.mismatched else Verdict.CONTINUE, float(counts.mismatched), 0.0,
        None, detail=(f"{counts.mismatched} comparisons with a different output shape or datatype, or an output "
                      "missing" if counts.mismatched else "output shapes and datatypes equal"))]
    rows, agree = counts.top1_rows, counts.top1_agree
    limit = 1 - config.min_top1_agreement
    log_e = _log_e_share_over((rows - agree) / d, agree / d, limit, _DISAGREEMENT_PRIOR)
    share = agree / rows if rows else None
    failed = log_e >= threshold
    evidence.append(Evidence(
        Check.TOP1_AGREEMENT, Verdict.FAIL if failed else Verdict.CONTINUE, share, config.min_top1_agreement, None,
        log_e=log_e, log_e_threshold=threshold, design_effect=d,
        detail=(f"top-1 agreement {share:.2%} of {rows} rows" if share is not None else "no rows with a top-1 yet")
        + (f", provably under {config.min_top1_agreement:.2%}" if failed else "")))
    if config.max_abs_error is not None:
        above = counts.above(config.max_abs_error)
        log_e = _log_e_share_over(above / d, (counts.compared - above) / d, _TAIL, _TAIL_PRIOR)
        failed = log_e >= threshold
        evidence.append(Evidence(
            Check.MAX_ABS_ERROR, Verdict.FAIL if failed else Verdict.CONTINUE, float(above), config.max_abs_error,
            None, log_e=log_e, log_e_threshold=threshold, design_effect=d,
            detail=f"{above} of {counts.compared} comparisons with a max abs error over {config.max_abs_error:g}"
                   + (", provably more than 1%" if failed else "")))
    summary = {"compared": counts.compared, "top1_rows": rows, "top1_agreement": share}
    failures = [e for e in evidence if e.verdict is Verdict.FAIL]
    if failures:
        return Judgement(Verdict.FAIL, "; ".join(e.detail for e in failures), tuple(evidence), candidate=summary)
    waiting = []
    if elapsed_seconds < phase_seconds:
        waiting.append(f"shadow phase: {elapsed_seconds:.0f} s of {phase_seconds:.0f} s")
    if counts.compared < config.min_compared:
        waiting.append(f"{counts.compared} of {config.min_compared} responses compared")
    ready = Evidence(Check.MIN_EVIDENCE, Verdict.CONTINUE if waiting else Verdict.PASS, float(counts.compared),
                     float(config.min_compared), None,
                     detail="; ".join(waiting) or "phase served and minimum comparisons reached")
    evidence.append(ready)
    if waiting:
        return Judgement(Verdict.CONTINUE, ready.detail, tuple(evidence), candidate=summary)
    return Judgement(Verdict.PASS, "outputs agree within the limits; " + ready.detail, tuple(evidence),
                     candidate=summary)


def _log_e_share_over(hits: float, misses: float, limit: float, prior: tuple[float, float]) -> float:
    """log e-value against "the share of hits is at most ``limit``" (0 when nothing was seen)."""
    n = hits + misses
    if n <= 0:
        return 0.0
    if limit >= 1:
        return 0.0
    closest_null = min(hits / n, limit)
    return _log_mixture(hits, misses, prior) - _loglik(hits, misses, closest_null)


# -- checks -------------------------------------------------------------------------------------


def _hard_error_rate(candidate: ArmCounts, config: AnalysisConfig) -> Evidence:
    rate = candidate.errors / candidate.requests if candidate.requests else 0.0
    fired = candidate.requests >= config.hard_min_requests and rate > config.hard_max_error_rate
    return Evidence(
        Check.HARD_ERROR_RATE, Verdict.FAIL if fired else Verdict.CONTINUE, rate, config.hard_max_error_rate, None,
        detail=(f"hard limit: candidate failed {candidate.errors} of {candidate.requests} requests "
                f"({rate:.1%} > {config.hard_max_error_rate:.0%})") if fired else "",
    )


def _error_rate(candidate: ArmCounts, baseline: ArmCounts, config: AnalysisConfig, intervals: bool) -> Evidence:
    alpha = config.alpha / 2
    limit = config.max_error_rate_increase_pp / 100
    if candidate.requests == 0 or baseline.requests == 0:
        return Evidence(Check.ERROR_RATE, Verdict.CONTINUE, None, config.max_error_rate_increase_pp, None,
                        detail="no requests on one side yet")
    d = _error_design_effect(candidate, baseline, config)
    sc, fc = candidate.errors / d, (candidate.requests - candidate.errors) / d
    sb, fb = baseline.errors / d, (baseline.requests - baseline.errors) / d
    increase = candidate.errors / candidate.requests - baseline.errors / baseline.requests
    log_e = _log_e_increase(sc, fc, sb, fb, limit)
    bound = math.log(1 / alpha)
    # The interval inverts the same test in the margin: every margin it rejects lies below it.
    failed = log_e >= bound
    low, high = -1.0, 1.0
    if intervals or failed:
        low = _sup_where(lambda m: _log_e_increase(sc, fc, sb, fb, m) >= bound, -1.0, increase, 1e-7)
    if intervals:
        high = _inf_where(lambda m: _log_e_increase(sb, fb, sc, fc, -m) >= bound, increase, 1.0, 1e-7)
    detail = (f"error rate up {increase * 100:.2f} pp (at least {low * 100:.2f} pp) over the allowed "
              f"{config.max_error_rate_increase_pp:g} pp: candidate {candidate.errors}/{candidate.requests}, "
              f"baseline {baseline.errors}/{baseline.requests}") if failed else ""
    return Evidence(Check.ERROR_RATE, Verdict.FAIL if failed else Verdict.CONTINUE, increase * 100,
                    config.max_error_rate_increase_pp, (low * 100, high * 100), log_e, bound, d, detail)


def _p99_ratio(candidate: ArmCounts, baseline: ArmCounts, config: AnalysisConfig, intervals: bool) -> Evidence:
    alpha = config.alpha / 4  # each of the two quantile bounds
    d = config.variance_inflation
    p99_c, p99_b = percentile_ms(candidate.buckets, QUANTILE), percentile_ms(baseline.buckets, QUANTILE)
    ratio = p99_c / p99_b if p99_c is not None and p99_b else None
    low_c, high_c = _quantile_bounds(candidate.buckets, d, alpha, upper=intervals)
    low_b, high_b = _quantile_bounds(baseline.buckets, d, alpha, lower=intervals)
    interval = (low_c / high_b if math.isfinite(high_b) else 0.0, high_c / low_b if low_b > 0 else math.inf)
    failed = math.isfinite(high_b) and low_c > config.max_p99_ratio * high_b
    detail = (f"p99 latency {p99_c:.1f} ms against {p99_b:.1f} ms (ratio {ratio:.2f}, at least {interval[0]:.2f}) "
              f"over the allowed {config.max_p99_ratio:g}x: the candidate's p99 is at least {low_c:.1f} ms, "
              f"the baseline's at most {high_b:.1f} ms") if failed and ratio is not None else ""
    return Evidence(Check.P99_RATIO, Verdict.FAIL if failed else Verdict.CONTINUE, ratio, config.max_p99_ratio,
                    interval, design_effect=d, detail=detail)


# -- statistics ---------------------------------------------------------------------------------


def _error_design_effect(candidate: ArmCounts, baseline: ArmCounts, config: AnalysisConfig) -> float:
    """Cluster-robust over binomial variance of the error rates, pooled over both arms; at least 1."""
    if candidate.users is None or baseline.users is None:
        return config.variance_inflation
    robust = binomial = 0.0
    for arm, users in ((candidate, candidate.users), (baseline, baseline.users)):
        if arm.requests == 0:
            continue
        p = arm.errors / arm.requests
        # sum_u (e_u - p n_u)^2 without the per-user list
        robust += max(0.0, users.sum_errors_sq - 2 * p * users.sum_requests_errors + p * p * users.sum_requests_sq)
        binomial += arm.requests * p * (1 - p)
    return max(1.0, robust / binomial) if binomial > 0 else 1.0


def _log_e_increase(sc: float, fc: float, sb: float, fb: float, margin: float) -> float:
    """log e-value against ``p_c - p_b <= margin`` from (scaled) error and success counts."""
    nc, nb = sc + fc, sb + fb
    if nc <= 0 or nb <= 0:
        return 0.0
    pc, pb = sc / nc, sb / nb
    mixture = _log_mixture(sc, fc, _ERROR_PRIOR) + _log_mixture(sb, fb, _ERROR_PRIOR)
    if pc - pb <= margin:
        return mixture - _loglik(sc, fc, pc) - _loglik(sb, fb, pb)
    # On the boundary p_c = x + margin, p_b = x; the maximiser lies between the two estimates.
    low, high = max(pb, -margin, 0.0), min(pc - margin, 1.0, 1.0 - margin)
    while high - low > 1e-12:
        x = (low + high) / 2
        slope = (_ratio(sc, x + margin) - _ratio(fc, 1 - x - margin) + _ratio(sb, x) - _ratio(fb, 1 - x))
        if slope > 0:
            low = x
        else:
            high = x
    x = (low + high) / 2
    return mixture - _loglik(sc, fc, x + margin) - _loglik(sb, fb, x)


def _log_e_tail(above: float, below: float, *, over: bool) -> float:
    """log e-value that the share above a point is over (or, ``over=False``, under) the 1% tail."""
    n = above + below
    if n <= 0:
        return 0.0
    share = above / n
    closest_null = min(share, _TAIL) if over else max(share, _TAIL)
    return _log_mixture(above, below, _TAIL_PRIOR) - _loglik(above, below, closest_null)


def _quantile_bounds(
    buckets: Sequence[int], design_effect: float, alpha: float, *, lower: bool = True, upper: bool = True,
) -> tuple[float, float]:
    """Anytime-valid (lower, upper) bounds in ms of the 0.99 quantile of a histogram (0 / inf when unknown or not asked)."""
    n = sum(buckets)
    bound = math.log(1 / alpha)
    if n == 0:
        return 0.0, math.inf

    def e_over(k: float) -> float:
        return _log_e_tail(k / design_effect, (n - k) / design_effect, over=True)

    def e_under(k: float) -> float:
        return _log_e_tail(k / design_effect, (n - k) / design_effect, over=False)

    # Fewest requests above a point that prove the point lies below the quantile; most that prove it above.
    low, high = 0.0, math.inf
    if lower and e_over(n) >= bound:
        k = _inf_where(lambda k: e_over(k) >= bound, _TAIL * n, float(n), 1e-3)
        low = _latency_with_count_above(buckets, k, upper=False)
    if upper and e_under(0.0) >= bound:
        k = _sup_where(lambda k: e_under(k) >= bound, 0.0, _TAIL * n, 1e-3)
        high = _latency_with_count_above(buckets, k, upper=True)
    return low, high


def _latency_with_count_above(buckets: Sequence[int], count: float, *, upper: bool) -> float:
    """The latency (ms) above which ``count`` requests of the histogram lie, uniform inside a bucket.

    Inside the open top bucket nothing is known: an upper bound is then infinite
    and a lower bound the top bound.
    """
    above = float(buckets[-1])
    if above > count:
        return math.inf if upper else LATENCY_BOUNDS_MS[-1]
    for i in range(len(LATENCY_BOUNDS_MS) - 1, -1, -1):
        inside = buckets[i]
        high = LATENCY_BOUNDS_MS[i]
        if above + inside > count:
            low = LATENCY_BOUNDS_MS[i - 1] if i else 0.0
            return high - (high - low) * (count - above) / inside
        above += inside
    return 0.0


def _log_mixture(successes: float, failures: float, prior: tuple[float, float]) -> float:
    """log of the Beta(a, b) mixture of Bernoulli likelihoods (a Beta-binomial sequence probability)."""
    a, b = prior
    return _log_beta(a + successes, b + failures) - _log_beta(a, b)


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _loglik(successes: float, failures: float, p: float) -> float:
    if (successes and p <= 0) or (failures and p >= 1):
        return -math.inf
    total = 0.0
    if successes:
        total += successes * math.log(p)
    if failures:
        total += failures * math.log1p(-p)
    return total


def _ratio(count: float, p: float) -> float:
    if not count:
        return 0.0
    return count / p if p > 0 else math.inf


def _sup_where(holds: Callable[[float], bool], low: float, high: float, tolerance: float) -> float:
    """The largest x in [low, high] where a predicate that holds on a prefix holds (``low`` if nowhere)."""
    if not holds(low):
        return low
    while high - low > tolerance:
        mid = (low + high) / 2
        if holds(mid):
            low = mid
        else:
            high = mid
    return low


def _inf_where(holds: Callable[[float], bool], low: float, high: float, tolerance: float) -> float:
    """The smallest x in [low, high] where a predicate that holds on a suffix holds (``high`` if nowhere)."""
    if not holds(high):
        return high
    while high - low > tolerance:
        mid = (low + high) / 2
        if holds(mid):
            high = mid
        else:
            low = mid
    return high


def _finite(value: object) -> bool:
    # numbers.Real admits numpy scalars, which counts summed with numpy are
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _finite_non_negative(name: str, value: object) -> None:
    if not (_finite(value) and value >= 0):  # type: ignore[operator]
        raise AnalysisError(name, f"must be a non-negative finite number, got {value!r}")
