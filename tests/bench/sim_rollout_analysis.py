"""Simulated canary steps judged every 5 s by control_plane.rollouts.analysis; prints a table.

Not a timed test: it checks the analysis' promises under clustered traffic.

    .venv/bin/python tests/bench/sim_rollout_analysis.py [--runs 1000] [--seed 1]

Traffic: 200 requests/s, the candidate owns 10% of the users (the routing hash
randomizes users, not requests). 20,000 users with log-normal activity (sigma 1),
so users send several requests each and a few send many. The baseline fails
0.1% of requests, spread unevenly over users (a user's own rate is 0.1% times
a Gamma(0.1, 10) factor: most users never fail, a few often). Latency is
20 ms x lognormal(0, 0.35) per request x lognormal(0, 0.15) per user (a
user's inputs are alike). Counted into the router's histogram buckets. Faults:
"+d pp" adds d to every candidate request's error chance; "x k p99" multiplies
every candidate latency by k. The analysis looks at the cumulative counts every
5 s of simulated traffic, with the defaults of ``AnalysisConfig`` (no pause, so
every look counts).
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import numpy as np

from control_plane.rollouts.analysis import AnalysisConfig, ArmCounts, UserTotals, Verdict, judge
from router.stats import LATENCY_BOUNDS_MS

RATE = 200.0
WEIGHT = 0.10
USERS = 20_000
LOOK_SECONDS = 5.0
BASE_ERROR = 0.001
BOUNDS_S = np.array(LATENCY_BOUNDS_MS) / 1000
NB = len(LATENCY_BOUNDS_MS) + 1


@dataclass(frozen=True)
class Scenario:
    name: str
    extra_error: float = 0.0
    latency_scale: float = 1.0
    horizon_s: float = 60.0
    config: AnalysisConfig = AnalysisConfig()
    user_totals: bool = False  # pass per-user sums, so the error check measures its design effect


def detection_time(rng: np.random.Generator, s: Scenario) -> float | None:
    """Seconds until the first FAIL, or None if the step was never failed within the horizon."""
    activity = rng.lognormal(0.0, 1.0, USERS)
    activity /= activity.sum()
    on_candidate = rng.random(USERS) < WEIGHT
    user_error = np.minimum(1.0, BASE_ERROR * rng.gamma(0.1, 10.0, USERS))
    user_latency = rng.lognormal(0.0, 0.15, USERS)

    n = rng.poisson(RATE * s.horizon_s)
    look = np.minimum((rng.random(n) * s.horizon_s // LOOK_SECONDS).astype(np.int64), int(s.horizon_s / LOOK_SECONDS) - 1)
    user = rng.choice(USERS, size=n, p=activity)
    cand = on_candidate[user]
    p_err = user_error[user] + np.where(cand, s.extra_error, 0.0)
    error = rng.random(n) < p_err
    latency = 0.020 * rng.lognormal(0.0, 0.35, n) * user_latency[user] * np.where(cand, s.latency_scale, 1.0)
    bucket = np.searchsorted(BOUNDS_S, latency)  # bisect_left, as router.stats.bucket_index

    looks = int(s.horizon_s / LOOK_SECONDS)
    arms = []
    for mask in (cand, ~cand):
        req = np.cumsum(np.bincount(look[mask], minlength=looks))
        err = np.cumsum(np.bincount(look[mask], weights=error[mask], minlength=looks))
        hist = np.cumsum(np.bincount(look[mask] * NB + bucket[mask], minlength=looks * NB).reshape(looks, NB), axis=0)
        arms.append((req, err, hist, mask))
    per_user = [(np.zeros(USERS), np.zeros(USERS)) for _ in arms]
    by_look = np.argsort(look, kind="stable")
    edges = np.searchsorted(look[by_look], np.arange(looks + 1))
    for k in range(looks):
        counts = []
        for (r, e, h, mask), (n_u, e_u) in zip(arms, per_user):
            totals = None
            if s.user_totals:
                now = by_look[edges[k]:edges[k + 1]]
                now = now[mask[now]]
                np.add.at(n_u, user[now], 1)
                np.add.at(e_u, user[now], error[now])
                # elementwise sums, not BLAS dot products: those spin threads on a busy machine
                totals = UserTotals(int(np.count_nonzero(n_u)), float((n_u * n_u).sum()), float((e_u * e_u).sum()),
                                    float((n_u * e_u).sum()))
            counts.append(ArmCounts.of(int(r[k]), int(e[k]), [int(x) for x in h[k]], totals))
        verdict = judge(counts[0], counts[1], elapsed_seconds=(k + 1) * LOOK_SECONDS,
                        pause_seconds=0, config=s.config, intervals=False).verdict
        if verdict is Verdict.FAIL:
            return (k + 1) * LOOK_SECONDS
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    loose = AnalysisConfig(max_error_rate_increase_pp=0.5)
    independent = AnalysisConfig(variance_inflation=1.0)
    scenarios = [
        (Scenario("A/A, 5 min", horizon_s=300), None),
        (Scenario("A/A, 5 min, per-user totals", horizon_s=300, user_totals=True), None),
        (Scenario("A/A, 5 min, variance_inflation=1", horizon_s=300, config=independent), None),
        (Scenario("+1 pp errors", extra_error=0.01), 60.0),
        (Scenario("+1 pp errors, per-user totals", extra_error=0.01, user_totals=True), 60.0),
        (Scenario("+1 pp errors, variance_inflation=1", extra_error=0.01, config=independent), 60.0),
        (Scenario("+1 pp errors, max_error_rate_increase_pp=0.5", extra_error=0.01, config=loose), 60.0),
        (Scenario("1.5x latency (p99 x1.5)", latency_scale=1.5), 60.0),
        (Scenario("1.5x latency, variance_inflation=1", latency_scale=1.5, config=independent), 60.0),
        (Scenario("5% errors", extra_error=0.05 - BASE_ERROR), 30.0),
        (Scenario("2x latency (p99 x2)", latency_scale=2.0), 30.0),
        (Scenario("2x latency, variance_inflation=1", latency_scale=2.0, config=independent), 30.0),
    ]
    print(f"{args.runs} runs each, looks every {LOOK_SECONDS:g} s, 10% of {RATE:g} req/s, "
          f"baseline errors {BASE_ERROR:.1%}, alpha {AnalysisConfig().alpha:g}, "
          f"variance_inflation {AnalysisConfig().variance_inflation:g}, max_p99_ratio {AnalysisConfig().max_p99_ratio:g}")
    header = f"{'scenario':<48} {'failed':>8} {'95% CI':>15} {'target':>14} {'median s':>9} {'p95 s':>7}"
    print(header)
    print("-" * len(header))
    for number, (scenario, within) in enumerate(scenarios):
        rng = np.random.default_rng([args.seed, number])
        started = time.perf_counter()
        times = [detection_time(rng, scenario) for _ in range(args.runs)]
        caught = sorted(t for t in times if t is not None and (within is None or t <= within))
        share = len(caught) / args.runs
        low, high = _wilson(len(caught), args.runs)
        if within is None:
            target = "<= 5% (false)"
            median = p95 = "-"
        else:
            target = f">= 95% in {within:g}s"
            median = f"{np.median(caught):.0f}" if caught else "-"
            p95 = f"{np.percentile(caught, 95):.0f}" if caught else "-"
        print(f"{scenario.name:<48} {share:>8.1%} {f'{low:.1%}-{high:.1%}':>15} {target:>14} {median:>9} {p95:>7}"
              f"   ({time.perf_counter() - started:.0f} s)", flush=True)


def _wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


if __name__ == "__main__":
    main()
