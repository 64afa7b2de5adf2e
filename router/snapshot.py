"""The routing snapshot: the one document the control plane hands to routers.

Shape (JSON)::

    {"revision": 42, "generated_at": "2026-11-22T10:00:00Z",
     "models": {"resnet50": {
        "key_header": "x-user-id", "salt": "resnet50", "anonymous": "weighted",
        "default_version": "3", "traffic_revision": 7,
        "rules": [{"name": "qa", "match": {"header": "x-tenant", "in": ["qa"]}, "version": "4"},
                  {"name": "beta", "match": {"key_in": ["u-1"]}, "version": "4"}],
        "splits": [{"version": "3", "weight": 95.0}, {"version": "4", "weight": 5.0}],
        "allocation": [[0, 9500, "3"], [9500, 10000, "4"]],
        "versions": {"3": {"endpoints": [{"url": "http://10.0.0.7:8000", "pool": "a100", "gpu_arch": "sm_80"}]},
                     "4": {"endpoints": []}}}}}

``revision`` only grows. A version listed with no endpoints is known but not
routable (not ready anywhere). Validation here is the router's guard: a
snapshot that fails it is refused and the last good one keeps serving.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from router.policy import Policy, PolicyRule
from router.policy import Split as PolicySplit
from router.routing import (
    AllocationError,
    ModelRouting,
    Range,
    bucket_counts,
    check_allocation,
    owned_counts,
)


# What the control plane and routers agree on besides the document itself.
DEFAULT_KEY_HEADER = "x-user-id"  # the routing key's header when a model names none
SNAPSHOT_KEY = "grayroute:snapshot"  # Redis: the newest snapshot (JSON); ``SNAPSHOT_KEY + ":revision"`` its revision
SNAPSHOT_CHANNEL = "grayroute:snapshot"  # Redis pub/sub: each new revision, as a decimal string


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HeaderMatch(_Frozen):
    header: Annotated[str, Field(min_length=1, max_length=128)]
    in_: Annotated[list[str], Field(alias="in", min_length=1)]

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class KeyMatch(_Frozen):
    key_in: Annotated[list[str], Field(min_length=1)]


class SnapshotRule(_Frozen):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    match: HeaderMatch | KeyMatch
    version: str

    def policy_rule(self) -> PolicyRule:
        if isinstance(self.match, HeaderMatch):
            return PolicyRule(self.name, self.version, self.match.header, tuple(self.match.in_))
        return PolicyRule(self.name, self.version, None, tuple(self.match.key_in))


class Split(_Frozen):
    version: str
    weight: Annotated[float, Field(ge=0, le=100)]


class Endpoint(_Frozen):
    url: Annotated[str, Field(pattern=r"^https?://[^\s/]+(/[^\s]*)?$")]
    pool: str
    gpu_arch: str


class VersionRoutes(_Frozen):
    endpoints: list[Endpoint] = []


class ModelSnapshot(_Frozen):
    key_header: Annotated[str, Field(min_length=1, max_length=128)] = DEFAULT_KEY_HEADER
    salt: Annotated[str, Field(min_length=1)]
    anonymous: Literal["weighted", "default"] = "weighted"
    default_version: str | None = None
    traffic_revision: int = 0
    rules: list[SnapshotRule] = []
    splits: list[Split]
    allocation: list[tuple[int, int, str]]
    versions: dict[str, VersionRoutes]

    @model_validator(mode="after")
    def _consistent(self) -> ModelSnapshot:
        try:
            counts = dict(bucket_counts((s.version, s.weight) for s in self.splits))
            check_allocation(self.allocation)
        except AllocationError as exc:
            raise ValueError(str(exc)) from exc
        owned = owned_counts(self.allocation)
        expected = {v: c for v, c in counts.items() if c}
        if owned != expected:
            raise ValueError(f"allocation owns {owned}, splits ask for {expected}")
        unknown = sorted(self.policy().referenced_versions() - set(self.versions))
        if unknown:
            raise ValueError(f"versions {unknown} are routed to but not listed in 'versions'")
        if self.anonymous == "default" and self.default_version is None:
            raise ValueError("anonymous policy 'default' needs a default_version")
        return self

    def policy(self) -> Policy:
        return Policy(
            default_version=self.default_version,
            splits=tuple(PolicySplit(s.version, s.weight) for s in self.splits),
            rules=tuple(r.policy_rule() for r in self.rules),
        )

    def routing(self, name: str) -> ModelRouting:
        allocation: list[Range] = [(s, e, v) for s, e, v in self.allocation]
        return ModelRouting.build(
            name=name,
            key_header=self.key_header,
            salt=self.salt,
            anonymous=self.anonymous,
            default_version=self.default_version,
            rules=self.policy().compiled_rules(),
            allocation=allocation,
        )


class Snapshot(_Frozen):
    revision: Annotated[int, Field(ge=0)]
    generated_at: str | None = None
    models: dict[str, ModelSnapshot] = {}


def parse_snapshot(raw: bytes | str) -> Snapshot:
    """Parse and validate; raises ``pydantic.ValidationError`` on anything malformed."""
    return Snapshot.model_validate_json(raw)
