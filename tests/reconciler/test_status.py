"""Phases from a plan and observations (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from control_plane.reconciler import desired as D
from control_plane.deployments.models import Phase
from control_plane.reconciler.status import drain_deadline, rows
from control_plane.reconciler.targets import Observed, SyncReport
from tests.reconciler.conftest import pool, traffic, version

NOW = datetime(2026, 1, 1, tzinfo=UTC)
DRAIN = timedelta(seconds=600)


def test_phases() -> None:
    versions = tuple(version(10 + i, f"v{i}", "sm_80") for i in range(4)) + (version(20, "bad", "sm_75"),)
    m = D.ModelSpec(1, "m", versions, traffic("v0", ("v0", 40), ("v1", 30), ("v2", 20), ("bad", 10)), {"a100": 10})
    previous = (D.PreviousStatus(13, 1, 2, "Ready"),)  # v3 left the active set
    plan = D.plan(D.Inputs((m,), (pool(1, "a100", "sm_80"),), previous), kind="kubernetes", now=NOW, drain=DRAIN)
    report = SyncReport(observed={
        (10, 1): Observed(ready_replicas=4, endpoints=tuple(f"http://10.0.0.{i}:8000" for i in range(4)), applied=True),
        (11, 1): Observed(ready_replicas=1, endpoints=("http://10.0.1.1:8000",), applied=True),
        (12, 1): Observed(),
        (13, 1): Observed(ready_replicas=2, endpoints=("http://10.0.3.1:8000", "http://10.0.3.2:8000"), applied=True),
    })
    by_version = {r.version_id: r for r in rows(plan, report, drain=DRAIN)}
    assert by_version[10].phase is Phase.READY and by_version[10].message == "4/4 ready"
    assert by_version[11].phase is Phase.PROGRESSING and by_version[11].desired_replicas == 3
    assert by_version[11].endpoints == ("http://10.0.1.1:8000",)  # partially ready is routable
    assert by_version[12].phase is Phase.PENDING and by_version[12].endpoints == ()
    assert by_version[13].phase is Phase.DRAINING and by_version[13].draining_since == NOW
    assert "2026-01-01T00:10:00Z" in by_version[13].message and by_version[13].endpoints
    # The UI reads the drain deadline back from the message to show the time left.
    assert drain_deadline(by_version[13].message) == NOW + DRAIN
    assert drain_deadline(by_version[10].message) is None
    assert by_version[20].phase is Phase.FAILED and "sm_75" in by_version[20].message


def test_target_error_marks_the_deployment_failed() -> None:
    m = D.ModelSpec(1, "m", (version(10, "v0", "sm_80"),), traffic("v0", ("v0", 100)))
    plan = D.plan(D.Inputs((m,), (pool(1, "a100", "sm_80"),)), kind="kubernetes", now=NOW, drain=DRAIN)
    (row,) = rows(plan, SyncReport(observed={(10, 1): Observed(error="Deployment rejected: 422 invalid")}),
                  drain=DRAIN)
    assert row.phase is Phase.FAILED and "422" in row.message
