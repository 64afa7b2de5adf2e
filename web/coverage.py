"""Which versions can serve where: engines and ready replicas per GPU pool, and the warnings a
traffic change deserves before it is applied (a share for a version that cannot serve yet)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from control_plane.deployments import service as deployments_service
from control_plane.reconciler.status import drain_deadline
from control_plane.registry import service as registry_service
from control_plane.registry.models import Model, VersionStatus

# Chip colour of each deployment phase (the model page and the coverage table).
PHASE_TONE = {"Ready": "ok", "Progressing": "warn", "Pending": "warn", "Draining": "muted", "Failed": "bad"}


@dataclass(frozen=True)
class Cell:
    """One version on one pool."""

    tone: str  # ok | warn | bad | muted
    text: str
    detail: str = ""


@dataclass
class Coverage:
    pools: list[Any]  # the columns: every pool, by name
    cells: dict[str, dict[str, Cell]] = field(default_factory=dict)  # version -> pool name -> cell
    runnable: set[str] = field(default_factory=set)  # versions some pool can run
    ready: set[str] = field(default_factory=set)  # versions with a ready replica somewhere

    def warnings(self, *, splits: Iterable[tuple[str, Any]], default: str | None,
                 rule_versions: Iterable[str] = ()) -> list[str]:
        """What would not serve as intended if this policy went live now."""
        told: list[str] = []
        shares = {version: Decimal(str(weight)) for version, weight in splits}
        routed = [v for v, w in shares.items() if w > 0] + [v for v in rule_versions if v not in shares]
        if default and default not in routed:
            routed.append(default)
        for version in dict.fromkeys(routed):
            share = shares.get(version, Decimal(0))
            what = f"{format(share.normalize(), 'f')}% of users" if share > 0 else "its requests"
            if version not in self.runnable:
                told.append(f"{version} has no engine that any pool can run (GPU architecture and TensorRT "
                            "version must match a pool): applying will be refused")
            elif version not in self.ready and version == default:
                told.append(f"the default version {version} has no ready replica: {what} and every fallback "
                            "fail (503) until it is up")
            elif version not in self.ready:
                fallback = f"the default version {default}" if default else "nobody"
                told.append(f"{version} has no ready replica yet: {what} go to {fallback} until it is up")
        return told


async def load(db: Any, *, model: Model, versions: Sequence[Any] | None = None) -> Coverage:
    """The coverage table of ``model``: for each non-retired version, each pool."""
    if versions is None:
        versions = await registry_service.list_versions(db, model=model)
    pools = list(await registry_service.list_pools(db))
    deployments = {(v.version, p.name): d for d, v, p in await deployments_service.list_deployments(db, model=model)}
    coverage = Coverage(pools=pools)
    for version in versions:
        if version.status == VersionStatus.RETIRED:
            continue
        # The same rule the API validates traffic with, so a warning here and a refusal there agree.
        runs_on = {p.name for p in await registry_service.runnable_pools(db, version=version)}
        if runs_on:
            coverage.runnable.add(version.version)
        row: dict[str, Cell] = {}
        for pool in pools:
            deployment = deployments.get((version.version, pool.name))
            row[pool.name] = _cell(version, pool, deployment, runs=pool.name in runs_on)
            if deployment is not None and deployment.ready_replicas > 0:
                coverage.ready.add(version.version)
        coverage.cells[version.version] = row
    return coverage


def drain_left(deployment: Any, now: datetime | None = None) -> str:
    """" · 9 min left" for a draining deployment (empty otherwise): how long a rollback stays instant."""
    if deployment is None or deployment.phase != "Draining":
        return ""
    deadline = drain_deadline(deployment.message or "")
    if deadline is None:
        return ""
    seconds = (deadline - (now or datetime.now(UTC))).total_seconds()
    if seconds <= 0:
        return " · ending"
    if seconds < 90:
        return f" · {int(seconds)} s left"
    if seconds < 5400:
        return f" · {round(seconds / 60)} min left"
    return f" · {seconds / 3600:.1f} h left"


def _cell(version: Any, pool: Any, deployment: Any, *, runs: bool) -> Cell:
    if deployment is not None:
        text = f"{deployment.phase} {deployment.ready_replicas}/{deployment.desired_replicas}{drain_left(deployment)}"
        return Cell(PHASE_TONE.get(deployment.phase, "warn"), text, deployment.message)
    if runs:
        return Cell("info", "engine, not deployed", "deployed once the version is routed to or kept warm")
    engine = next((e for e in version.engines if e.gpu_arch == pool.gpu_arch), None)
    if engine is None:
        return Cell("muted", f"no {pool.gpu_arch} engine")
    return Cell("muted", "TensorRT mismatch",
                f"engine built with TensorRT {engine.trt_version}, pool runs {pool.trt_version}")


def weights_of(put: Any) -> list[tuple[str, Any]]:
    """(version, weight) of a TrafficPut's splits."""
    return [(s.version, s.weight) for s in put.splits]


def rule_targets(rules: Iterable[Mapping[str, Any] | Any]) -> list[str]:
    return [r["version"] if isinstance(r, Mapping) else r.version for r in rules]


async def warm_message(db: Any, *, model_name: str, version: str, warm: bool) -> tuple[str, str]:
    """(flash kind, text) for what "Keep warm" did: a version no pool can run starts nothing, and is told so."""
    if not warm:
        return "ok", f"Version {version} is no longer kept warm."
    model = await registry_service.get_model_or_raise(db, name=model_name)
    found = await registry_service.get_version_or_raise(db, model=model, version=version)
    if not await registry_service.runnable_pools(db, version=found):
        return "warn", (f"Marked {version} warm, but no pool can run it (none matches its engines' GPU architecture "
                        "and TensorRT version), so nothing is started.")
    return "ok", f"Version {version} is kept warm."
