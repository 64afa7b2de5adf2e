"""Status rows from a plan and what the target observed: pure, so phases are tested alone.

A deployment the target did not observe this pass gets no row: its last
status (and its endpoints in the snapshot) stand until it is seen again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from control_plane.reconciler.desired import DeploymentKey, Intent, Plan
from control_plane.deployments.models import Phase
from control_plane.reconciler.targets import SyncReport


@dataclass(frozen=True)
class StatusRow:
    version_id: int
    pool_id: int
    desired_replicas: int
    ready_replicas: int
    endpoints: tuple[str, ...]
    phase: Phase
    message: str
    draining_since: datetime | None

    @property
    def key(self) -> DeploymentKey:
        return (self.version_id, self.pool_id)

    def routing_view(self) -> tuple[int, tuple[str, ...]]:
        """What the snapshot reads from a row: a change here needs a new snapshot."""
        return (1 if self.ready_replicas > 0 else 0, self.endpoints if self.ready_replicas > 0 else ())


_DRAIN_UNTIL = "%Y-%m-%dT%H:%M:%SZ"  # in a draining row's message; read back by drain_deadline


def drain_deadline(message: str) -> datetime | None:
    """When a draining deployment is removed, as its status message says (None: not said)."""
    _, found, rest = message.rpartition("until ")
    try:
        return datetime.strptime(rest.strip(), _DRAIN_UNTIL).replace(tzinfo=UTC) if found else None
    except ValueError:
        return None


def rows(plan: Plan, report: SyncReport, *, drain: timedelta) -> list[StatusRow]:
    out: list[StatusRow] = []
    for failure in plan.failures:
        out.append(StatusRow(failure.version_id, failure.pool_id, 0, 0, (), Phase.FAILED, failure.message, None))
    for d in plan.deployments:
        seen = report.observed.get(d.key)
        if seen is None:
            continue  # the target could not look this pass; keep what the row says
        ready = seen.ready_replicas
        endpoints = seen.endpoints if ready > 0 else ()
        if seen.error:
            phase, message = Phase.FAILED, seen.error
        elif d.intent is Intent.DRAINING:
            until = (d.draining_since + drain).strftime(_DRAIN_UNTIL) if d.draining_since else "soon"
            phase, message = Phase.DRAINING, f"left the active set; kept warm for rollback until {until}"
        elif ready >= d.replicas and endpoints:
            phase, message = Phase.READY, f"{ready}/{d.replicas} ready"
        elif seen.problem:
            # No pod of this engine can start (a bad artifact, refused credentials): say so until fixed.
            phase = Phase.FAILED if ready == 0 else Phase.PROGRESSING
            message = f"{ready}/{d.replicas} ready; {seen.problem}"
        elif seen.applied:
            phase, message = Phase.PROGRESSING, f"{ready}/{d.replicas} ready"
        else:
            phase, message = Phase.PENDING, "waiting to be applied"
        out.append(
            StatusRow(
                d.version_id, d.pool_id, d.replicas, ready, endpoints, phase, message,
                d.draining_since if d.intent is Intent.DRAINING else None,
            )
        )
    return out
