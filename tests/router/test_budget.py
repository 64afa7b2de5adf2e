"""The retry budget's bound: retries never exceed the reserve plus ``ratio`` of the requests."""

from __future__ import annotations

import random

from router.budget import RetryBudget


def test_retries_stay_within_reserve_plus_ratio_of_requests() -> None:
    rng = random.Random(11)
    budget = RetryBudget(0.2, reserve=10, ceiling=100)
    requests = retries = 0
    for _ in range(50_000):
        budget.deposit()
        requests += 1
        # a fleet in trouble: up to three failed attempts per request, in bursts
        for _ in range(rng.choice((0, 0, 0, 3))):
            if budget.withdraw():
                retries += 1
        assert retries <= 10 + 0.2 * requests
    assert retries > 0.19 * requests  # the budget is spent, not hoarded


def test_a_calm_stretch_banks_at_most_the_ceiling() -> None:
    budget = RetryBudget(0.2, reserve=10, ceiling=100)
    for _ in range(10_000):
        budget.deposit()
    granted = 0
    while budget.withdraw():
        granted += 1
    assert granted == 100  # a storm after a quiet hour gets the ceiling, not 2,000 retries


def test_zero_turns_retries_off() -> None:
    budget = RetryBudget(0.0)
    for _ in range(100):
        budget.deposit()
    assert not budget.withdraw()
