"""Deployment targets: where desired deployments run. One module per provider.

A target does one thing per pass: make the world match the desired
deployments (apply what changed, garbage-collect what is no longer desired)
and report what it observes. The reconciler loop knows nothing else about it.

Errors are reported as data, never raised out of ``sync``, so one bad
deployment cannot stop the pass for the others: a failure worth retrying (5xx,
timeouts, refused connections) goes to ``SyncReport.transient_errors`` and the
loop retries with backoff; one that retrying the same input cannot fix (400,
403, 422) goes to that deployment's ``Observed.error`` and is written to its
status.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from control_plane.reconciler.desired import DeploymentKey, DesiredDeployment


@dataclass(frozen=True)
class Observed:
    """What a target sees of one desired deployment."""

    ready_replicas: int = 0
    # Ready backend URLs only; the router balances across them.
    endpoints: tuple[str, ...] = ()
    # Objects exist with the desired spec (False while an apply is pending or failed).
    applied: bool = False
    # A permanent error for this deployment (the target will not retry it unchanged).
    error: str | None = None
    # Why pods cannot start, as they report it (e.g. the engine fetch's termination message).
    problem: str | None = None


@dataclass
class SyncReport:
    observed: dict[DeploymentKey, Observed] = field(default_factory=dict)
    # Temporary failures of this pass; the loop retries with backoff.
    transient_errors: list[str] = field(default_factory=list)
    writes: int = 0


Wake = Callable[[], None]


class Target(Protocol):
    """A place that runs deployments of one pool kind."""

    kind: str

    async def start(self, wake: Wake) -> None:
        """Begin watching for changes; call ``wake`` (from any thread) when one is seen."""

    async def sync(self, desired: Sequence[DesiredDeployment]) -> SyncReport:
        """Apply ``desired``, delete every managed object not in it, and observe."""

    async def close(self) -> None:
        """Stop watching; for targets that own processes, stop them."""
