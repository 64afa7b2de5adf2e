"""Desired state: a pure function from registry + traffic + previous status to a plan.

No I/O and no clock: the caller passes ``now``. The input types are plain
frozen dataclasses so the function is tested without a database;
``service.py`` maps ORM rows onto them.

Rules (see the design's reconciler section):
- A version is *active* when the live policy references it
  (``Policy.referenced_versions``: weight > 0, a rule target, the default
  version, the shadow) or it is marked warm (and not retired).
- An active version gets one deployment on every pool of the target's kind
  whose GPU architecture and TensorRT version match one of its engines.
- Replicas follow the version's traffic share of the model's per-pool budget
  (largest-remainder apportionment, so shares add up to the budget), never
  below 1 while active.
- A version a rollout step holds to some pools (``ModelSpec.placement``) is
  deployed on those pools only; elsewhere its deployments drain.
- A deployment whose version leaves the active set drains: it keeps its
  replicas for the drain period (a rollback is then a routing change, not a
  cold start), after which it is removed.
- Mismatches that no retry can fix are *failures*, written to status.
"""

from __future__ import annotations

import enum
import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from control_plane.deployments.models import Phase
from control_plane.registry.compatibility import trt_compatible
from control_plane.registry.models import VersionStatus
from router.policy import Policy, Split

MANAGED_BY = "grayroute"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_MODEL = "grayroute.io/model"
LABEL_VERSION = "grayroute.io/version"
LABEL_POOL = "grayroute.io/pool"
LABEL_GPU_ARCH = "grayroute.io/gpu-arch"
# Selects the pods of exactly one deployment (the name is unique, the other labels are not).
LABEL_DEPLOYMENT = "grayroute.io/deployment"

DNS_LABEL_MAX = 63
_HASH_LEN = 8


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class EngineSpec:
    gpu_arch: str
    uri: str
    sha256: str
    trt_version: str
    size_bytes: int | None = None


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str  # KServe v2 name: FP32, INT64, BYTES ...
    shape: tuple[int, ...]  # full shape, batch dimension first when batched; -1 is dynamic


@dataclass(frozen=True)
class IoSignature:
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    max_batch_size: int = 0


@dataclass(frozen=True)
class Batching:
    """Triton's dynamic batcher."""

    max_queue_delay_microseconds: int = 0
    preferred_batch_size: tuple[int, ...] = ()


@dataclass(frozen=True)
class VersionSpec:
    id: int
    label: str
    precision: str
    trt_version: str
    status: str = "registered"
    warm: bool = False
    engines: tuple[EngineSpec, ...] = ()
    signature: IoSignature | None = None
    batching: Batching | None = None


@dataclass(frozen=True)
class ModelSpec:
    id: int
    name: str
    versions: tuple[VersionSpec, ...] = ()
    traffic: Policy | None = None  # the live traffic revision's policy
    # Per-pool replica budget {pool_name: n}; a pool not named gets 1.
    replicas: Mapping[str, int] = field(default_factory=dict)
    # Versions held to some pools {label: pool names}: a rollout step that places its candidate on those only.
    placement: Mapping[str, frozenset[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class PoolSpec:
    id: int
    name: str
    gpu_arch: str
    kind: str
    trt_version: str
    namespace: str | None = None
    node_selector: Mapping[str, str] = field(default_factory=dict)
    runtime_image: str | None = None
    # Names only: a service account (IRSA / Workload Identity) or a Secret given to the engine fetch.
    service_account: str | None = None
    credentials_secret: str | None = None


@dataclass(frozen=True)
class PreviousStatus:
    """What the deployments table said after the last pass."""

    version_id: int
    pool_id: int
    desired_replicas: int
    phase: str
    draining_since: datetime | None = None


@dataclass(frozen=True)
class Inputs:
    models: tuple[ModelSpec, ...] = ()
    pools: tuple[PoolSpec, ...] = ()
    previous: tuple[PreviousStatus, ...] = ()


# ---------------------------------------------------------------- outputs


class Intent(enum.StrEnum):
    ACTIVE = "active"
    DRAINING = "draining"


DeploymentKey = tuple[int, int]  # (version_id, pool_id)


@dataclass(frozen=True)
class DesiredDeployment:
    version_id: int
    pool_id: int
    model: str
    version: str
    precision: str
    pool: PoolSpec
    engine: EngineSpec
    name: str
    labels: Mapping[str, str]
    replicas: int
    intent: Intent
    draining_since: datetime | None = None
    signature: IoSignature | None = None
    batching: Batching | None = None

    @property
    def key(self) -> DeploymentKey:
        return (self.version_id, self.pool_id)


@dataclass(frozen=True)
class Failure:
    """A permanent problem of one (version, pool): written to status, never retried as is."""

    version_id: int
    pool_id: int
    message: str

    @property
    def key(self) -> DeploymentKey:
        return (self.version_id, self.pool_id)


@dataclass(frozen=True)
class Plan:
    deployments: tuple[DesiredDeployment, ...] = ()
    failures: tuple[Failure, ...] = ()
    # Status rows whose deployment is over (drain expired, version or pool gone).
    removed: tuple[DeploymentKey, ...] = ()


# ---------------------------------------------------------------- naming

_INVALID_NAME = re.compile(r"[^a-z0-9-]+")
_INVALID_LABEL = re.compile(r"[^A-Za-z0-9._-]+")


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:_HASH_LEN]


def object_name(model: str, version: str, pool: str) -> str:
    """A DNS-1035 label (≤ 63 chars) naming the Deployment and Service of (model, version, pool).

    The hash suffix is computed from the raw parts, so two triples that
    sanitize or truncate alike ("v1.0" and "v1-0") still get distinct names,
    and the name never changes while the triple does not.
    """
    suffix = _digest(model, version, pool)
    readable = "-".join(_INVALID_NAME.sub("-", p.lower()) for p in (model, version, pool))
    readable = re.sub(r"-{2,}", "-", readable).strip("-")
    readable = readable[: DNS_LABEL_MAX - _HASH_LEN - 1].rstrip("-")
    if not readable or not readable[0].isalpha():
        readable = ("g-" + readable)[: DNS_LABEL_MAX - _HASH_LEN - 1].rstrip("-")
    return f"{readable}-{suffix}"


def label_value(value: str) -> str:
    """A valid Kubernetes label value: ≤ 63 chars, alphanumeric at both ends.

    Values that had to change carry a hash suffix so they stay distinct.
    """
    clean = _INVALID_LABEL.sub("-", value).strip("-_.")
    if clean == value and len(clean) <= DNS_LABEL_MAX:
        return clean
    head = clean[: DNS_LABEL_MAX - _HASH_LEN - 1].rstrip("-_.")
    return f"{head}-{_digest(value)}" if head else _digest(value)


def labels_for(model: str, version: str, pool: PoolSpec, name: str) -> dict[str, str]:
    return {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_MODEL: label_value(model),
        LABEL_VERSION: label_value(version),
        LABEL_POOL: label_value(pool.name),
        LABEL_GPU_ARCH: label_value(pool.gpu_arch),
        LABEL_DEPLOYMENT: name,
    }


# ---------------------------------------------------------------- matching


def engine_for(version: VersionSpec, pool: PoolSpec) -> EngineSpec | None:
    for engine in version.engines:
        if engine.gpu_arch == pool.gpu_arch and trt_compatible(engine.trt_version or version.trt_version, pool.trt_version):
            return engine
    return None


# ---------------------------------------------------------------- activity and replicas


def active_versions(model: ModelSpec) -> set[str]:
    traffic = model.traffic or Policy()
    active = set(traffic.referenced_versions())
    active |= {v.label for v in model.versions if v.warm and v.status != VersionStatus.RETIRED}
    return active


def apportion(budget: int, splits: Sequence[Split]) -> dict[str, int]:
    """Split ``budget`` replicas by weight with the largest-remainder method.

    Ties go to the version listed first. The sum equals the budget; the
    "at least 1" floor is applied by the caller.
    """
    weighted = [s for s in splits if s.weight > 0]
    total = sum(s.weight for s in weighted)
    if budget <= 0 or total <= 0:
        return {}
    quotas = [(s.version, budget * s.weight / total) for s in weighted]
    shares = {v: math.floor(q) for v, q in quotas}
    left = budget - sum(shares.values())
    by_remainder = sorted(range(len(quotas)), key=lambda i: (-(quotas[i][1] - math.floor(quotas[i][1])), i))
    for i in by_remainder[:left]:
        shares[quotas[i][0]] += 1
    return shares


def replicas_for(model: ModelSpec, pool: PoolSpec, version: str) -> int:
    budget = int(model.replicas.get(pool.name, 1))
    traffic = model.traffic or Policy()
    return max(1, apportion(budget, traffic.splits).get(version, 0))


# ---------------------------------------------------------------- the plan


def _deployment(
    model: ModelSpec,
    version: VersionSpec,
    pool: PoolSpec,
    engine: EngineSpec,
    *,
    replicas: int,
    intent: Intent,
    draining_since: datetime | None = None,
) -> DesiredDeployment:
    name = object_name(model.name, version.label, pool.name)
    return DesiredDeployment(
        version_id=version.id,
        pool_id=pool.id,
        model=model.name,
        version=version.label,
        precision=version.precision,
        pool=pool,
        engine=engine,
        name=name,
        labels=labels_for(model.name, version.label, pool, name),
        replicas=replicas,
        intent=intent,
        draining_since=draining_since,
        signature=version.signature,
        batching=version.batching,
    )


def _no_pool_message(version: VersionSpec, pools: Sequence[PoolSpec]) -> str:
    engines = ", ".join(f"{e.gpu_arch} (TensorRT {e.trt_version or version.trt_version})" for e in version.engines)
    offered = ", ".join(f"{p.name}: {p.gpu_arch} (TensorRT {p.trt_version})" for p in pools)
    if not version.engines:
        return f"version {version.label} has no engines; pools: {offered}"
    return f"no pool matches an engine of version {version.label}: engines {engines}; pools {offered}"


def plan(inputs: Inputs, *, kind: str, now: datetime, drain: timedelta) -> Plan:
    """The deployments that should exist for pools of ``kind``, the failures, and finished rows."""
    pools = [p for p in inputs.pools if p.kind == kind]
    pool_by_id = {p.id: p for p in pools}
    deployments: dict[DeploymentKey, DesiredDeployment] = {}
    failures: dict[DeploymentKey, Failure] = {}
    located: dict[int, tuple[ModelSpec, VersionSpec]] = {}

    for model in inputs.models:
        active = active_versions(model)
        for version in model.versions:
            located[version.id] = (model, version)
            if version.label not in active or not pools:
                continue
            placed = False
            held_to = model.placement.get(version.label)
            for pool in pools:
                if held_to is not None and pool.name not in held_to:
                    continue
                engine = engine_for(version, pool)
                if engine is not None:
                    placed = True
                    deployments[(version.id, pool.id)] = _deployment(
                        model, version, pool, engine,
                        replicas=replicas_for(model, pool, version.label),
                        intent=Intent.ACTIVE,
                    )
                    continue
                same_arch = [e for e in version.engines if e.gpu_arch == pool.gpu_arch]
                if same_arch:
                    built = ", ".join(sorted({e.trt_version or version.trt_version for e in same_arch}))
                    failures[(version.id, pool.id)] = Failure(
                        version.id,
                        pool.id,
                        f"TensorRT mismatch: the {pool.gpu_arch} engine of {version.label} was built with "
                        f"TensorRT {built}, pool {pool.name} runs TensorRT {pool.trt_version}",
                    )
            if not placed and held_to is None and not any(f.version_id == version.id for f in failures.values()):
                message = _no_pool_message(version, pools)
                for pool in pools:
                    failures[(version.id, pool.id)] = Failure(version.id, pool.id, message)

    foreign = {p.id for p in inputs.pools if p.kind != kind}
    removed: list[DeploymentKey] = []
    for prev in inputs.previous:
        key = (prev.version_id, prev.pool_id)
        if key in deployments or key in failures or prev.pool_id in foreign:
            continue  # another target (or the API, for external pools) owns foreign rows
        prev_pool = pool_by_id.get(prev.pool_id)
        found = located.get(prev.version_id)
        engine = engine_for(found[1], prev_pool) if (found and prev_pool) else None
        if prev.phase == Phase.FAILED or found is None or prev_pool is None or engine is None:
            removed.append(key)
            continue
        since = prev.draining_since or now
        if now - since >= drain:
            removed.append(key)
            continue
        model, version = found
        deployments[key] = _deployment(
            model, version, prev_pool, engine,
            replicas=max(1, prev.desired_replicas),
            intent=Intent.DRAINING,
            draining_since=since,
        )

    return Plan(
        deployments=tuple(sorted(deployments.values(), key=lambda d: d.key)),
        failures=tuple(sorted(failures.values(), key=lambda f: f.key)),
        removed=tuple(sorted(removed)),
    )
