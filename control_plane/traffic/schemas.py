"""API shapes for traffic policies and route explanations."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, WithJsonSchema, field_validator

from control_plane.errors import UNION_TAG_PREFIX
from control_plane.registry.schemas import HEADER_NAME, MODEL_NAME, VersionLabel, refuse_nul
from control_plane.traffic.models import TrafficRevision
from router.policy import Policy, PolicyRule, Split

MAX_REVISION = 2**31 - 1  # revisions are INTEGER columns

# Policy size, sized to use: rules are allow-lists of QA users and tenants (hundreds of values, not
# millions) and a policy travels in every routing snapshot to every router. At these limits the largest
# policy is about 0.55 MB of JSON, within the request limit (GRAYROUTE_MAX_REQUEST_BYTES, 1 MiB), and
# applies in well under a second (tests/control_plane/test_limits.py measures it).
MAX_RULES = 32
MAX_VALUES_PER_RULE = 1000
MAX_VALUES_PER_POLICY = 2000
MAX_VALUE_LENGTH = 256  # a user id, tenant or header value; UUIDs are 36

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
    in_: Annotated[list[Annotated[str, Field(min_length=1, max_length=MAX_VALUE_LENGTH)]],
                   Field(alias="in", min_length=1, max_length=MAX_VALUES_PER_RULE)]


class KeyMatchIn(_Input):
    key_in: Annotated[list[Annotated[str, Field(min_length=1, max_length=MAX_VALUE_LENGTH)]],
                      Field(min_length=1, max_length=MAX_VALUES_PER_RULE)]


def _match_kind(value: Any) -> str:
    # Picks the variant from the keys sent, so a refusal is about that variant only (never both).
    keyed = isinstance(value, KeyMatchIn) or (isinstance(value, dict) and "key_in" in value)
    return f"{UNION_TAG_PREFIX}key" if keyed else f"{UNION_TAG_PREFIX}header"


class RuleIn(_Input):
    name: Annotated[str, Field(pattern=MODEL_NAME)]
    match: Annotated[Annotated[HeaderMatchIn, Tag(f"{UNION_TAG_PREFIX}header")]
                     | Annotated[KeyMatchIn, Tag(f"{UNION_TAG_PREFIX}key")], Discriminator(_match_kind)]
    version: VersionLabel


class TrafficPut(_Input):
    default_version: Annotated[VersionLabel, Field(description=(
        "the fallback: serves requests whose version has no ready backend (and anonymous requests under the "
        "'default' policy); must have an engine some pool can run. It may have 0% of the split, then it serves "
        "only fallbacks"))]
    splits: Annotated[list[SplitIn], Field(min_length=1, max_length=64)]
    rules: Annotated[list[RuleIn], Field(max_length=MAX_RULES)] = []
    reason: Annotated[str, Field(max_length=2000)] = ""
    reapplied_from: Annotated[int | None, Field(ge=1, le=MAX_REVISION,
                                                description="the revision whose weights this re-applies")] = None

    @field_validator("rules")
    @classmethod
    def _values_in_all(cls, rules: list[RuleIn]) -> list[RuleIn]:
        total = sum(len(r.match.in_ if isinstance(r.match, HeaderMatchIn) else r.match.key_in) for r in rules)
        if total > MAX_VALUES_PER_POLICY:
            raise ValueError(f"{total} match values in all rules; a policy holds at most {MAX_VALUES_PER_POLICY} "
                             "(rules are for QA users and tenants; route larger populations with splits)")
        return rules

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


class TrafficWritten(TrafficRead):
    created: bool = Field(description="false: the policy was identical to the live one, so no revision was "
                                      "written and this is the live revision")
    message: str
    notes: list[str] = Field(default=[], description="what the live policy implies, e.g. a 0% default version "
                                                     "that serves only fallbacks")


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
