"""The retry budget: retries may add at most a fixed share of the requests a router sends.

Like Finagle's ``RetryBudget`` and Envoy's retry budgets: each request deposits
``ratio`` of a retry, each retry withdraws a whole one. When a fleet fails, the
budget runs dry and the router stops multiplying the load on whatever is left;
in normal times the rare retry is always affordable. A small reserve lets a
router that has just started (or sends little) retry a few times; the balance
is capped so a long calm stretch does not bank a storm's worth of retries.
Whatever the history, retries never exceed ``reserve + ratio x requests``.
"""

from __future__ import annotations


class RetryBudget:
    __slots__ = ("balance", "ceiling", "ratio")

    def __init__(self, ratio: float, *, reserve: float = 10.0, ceiling: float = 100.0) -> None:
        self.ratio = ratio
        self.balance = reserve if ratio > 0 else 0.0  # a zero budget turns retries off entirely
        self.ceiling = max(ceiling, reserve)

    def deposit(self) -> None:
        """One request sent."""
        balance = self.balance + self.ratio
        self.balance = balance if balance < self.ceiling else self.ceiling

    def withdraw(self) -> bool:
        """Whether one retry may be made now (and if so, pay for it)."""
        if self.balance >= 1.0:
            self.balance -= 1.0
            return True
        return False
