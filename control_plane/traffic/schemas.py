"""API shapes for traffic policies and route explanations."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

from control_plane.registry.schemas import HEADER_NAME, MODEL_NAME, VersionLabel, refuse_nul
from control_plane.traffic.models import TrafficRevision
from router.policy import Policy, PolicyRule, Split

MAX_REVISION = 2**31 - 1  # revisions are INTEGER columns

# Spelled out: pydantic's own schema for it admits any string and any number of decimals.
Weight = Annotated[Decimal, Field(ge=0, le=100, decimal_places=2), WithJsonSchema({
    "anyOf": [{"type": "number", "minimum": 0, "maximum": 100, "multipleOf": 0.01},
              {"type": "string", "pattern": r"^(100(\.0{0,2})?|[0-9]{1,2}(\.[0-9]{0,2})?)$"}],
    "description": "percent, at most two decimals"})]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        return refuse_nul(value)


class SplitIn(_Input):
    version: VersionLabel
    weight: Weight


class HeaderMatchIn(_Input):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    header: Annotated[str, Field(pattern=HEADER_NAME, max_length=128)]
    in_: Annotated[list[Annotated[str, Field(min_length=1, max_length=256)]],
                   Field(alias="in", min_length=1, max_length=1000)]


class KeyMatchIn(_Input):
    key_in: Annotated[list[Annotated[str, Field(min_length=1, max_length=4096)]], Field(min_length=1, max_length=10000)]


class RuleIn(_Input):
    name: Annotated[str, Field(pattern=MODEL_NAME)]
    match: HeaderMatchIn | KeyMatchIn
    version: VersionLabel


class TrafficPut(_Input):
    default_version: VersionLabel
    splits: Annotated[list[SplitIn], Field(min_length=1, max_length=64)]
    rules: Annotated[list[RuleIn], Field(max_length=64)] = []
    reason: Annotated[str, Field(max_length=2000)] = ""
    reapplied_from: Annotated[int | None, Field(ge=1, le=MAX_REVISION,
                                                description="the revision whose weights this re-applies")] = None

    def policy(self) -> Policy:
        return Policy(self.default_version, tuple(Split(s.version, float(s.weight)) for s in self.splits),
                      tuple(PolicyRule.from_json(r.model_dump(by_alias=True)) for r in self.rules))


class ActionIn(_Input):
    """Promote or roll back ``version``; re-apply ``revision``."""

    version: VersionLabel | None = Field(None, description="promote, roll back: the version")
    revision: Annotated[int | None, Field(ge=1, le=MAX_REVISION, description="re-apply: the revision")] = None
    reason: Annotated[str, Field(max_length=2000)] = ""


class TrafficRead(BaseModel):
    model: str
    revision: int
    default_version: str | None
    splits: list[dict[str, Any]]
    rules: list[dict[str, Any]]
    allocation: list[list[Any]]
    reason: str
    reapplied_from: int | None = None
    created_by: str | None
    created_at: datetime | None

    @classmethod
    def of(cls, model: str, revision: TrafficRevision | None) -> TrafficRead:
        if revision is None:
            return cls(model=model, revision=0, default_version=None, splits=[], rules=[], allocation=[],
                       reason="", created_by=None, created_at=None)
        return cls(model=model, revision=revision.revision, **revision.policy.to_json(),
                   allocation=revision.allocation, reason=revision.reason, reapplied_from=revision.reapplied_from,
                   created_by=revision.created_by, created_at=revision.created_at)


class RouteExplanation(BaseModel):
    model: str
    key: str | None
    bucket: int | None
    version: str | None = Field(description="where a request goes now, given which versions have ready backends")
    route: str
    rule: str | None
    policy_version: str | None = Field(description="where the policy alone sends it, ignoring readiness")
    ready_versions: list[str]
    traffic_revision: int
