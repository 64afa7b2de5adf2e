"""API shapes of rollouts (DESIGN "Rollouts")."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from control_plane.registry.schemas import MODEL_NAME, VersionLabel, refuse_nul
from control_plane.rollouts.models import Rollout, RolloutPhase, RolloutState, RolloutVerdict
from control_plane.traffic.schemas import Weight

MAX_STEPS = 20
MAX_PAUSE_SECONDS = 7 * 24 * 3600
Reason = Annotated[str, Field(max_length=2000)]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        return refuse_nul(value)


class StepIn(_Input):
    """Give the candidate ``weight`` percent for at least ``pause_seconds`` (and until the analysis passes)."""

    weight: Annotated[Weight, Field(gt=0)]
    pause_seconds: Annotated[int, Field(ge=0, le=MAX_PAUSE_SECONDS)] = 0
    # Deploy the candidate only on these pools during the step (e.g. one architecture first); None: everywhere.
    pools: Annotated[list[Annotated[str, Field(pattern=MODEL_NAME)]] | None, Field(min_length=1, max_length=64)] = None


class ShadowPhaseIn(_Input):
    percent: Annotated[Weight, Field(gt=0)]
    seconds: Annotated[int, Field(ge=1, le=MAX_PAUSE_SECONDS)]


class AnalysisIn(_Input):
    """``rollouts.analysis.AnalysisConfig`` fields; omitted ones take its defaults (it checks their ranges)."""

    # NaN and infinities are no settings, and counts stay within what every JSON encoder writes exactly.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_error_rate_increase_pp: float | None = None
    max_p99_ratio: float | None = None
    min_requests: Annotated[int, Field(le=10**9)] | None = None
    alpha: float | None = None
    variance_inflation: float | None = None
    hard_max_error_rate: float | None = None
    hard_min_requests: Annotated[int, Field(le=10**9)] | None = None
    # Parity limits of the shadow phase.
    min_top1_agreement: Annotated[float, Field(ge=0, le=1)] | None = None
    max_abs_error: Annotated[float, Field(ge=0, le=1e12)] | None = None


class GatesIn(_Input):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_benchmark_p99_ratio: Annotated[float, Field(ge=1, le=100)] = 1.25


class RolloutCreate(_Input):
    candidate: VersionLabel
    baseline: VersionLabel | None = None  # default: the live policy's default version
    reason: Reason = ""
    steps: Annotated[list[StepIn], Field(min_length=1, max_length=MAX_STEPS)]
    shadow: ShadowPhaseIn | None = None
    analysis: AnalysisIn = Field(default_factory=AnalysisIn)
    gates: GatesIn = Field(default_factory=GatesIn)
    override_gates: bool = False


class RolloutAction(_Input):
    reason: Reason = ""


class StepRead(BaseModel):
    weight: float
    pause_seconds: int
    pools: list[str] | None = None


class GateEvidence(BaseModel):
    model_config = ConfigDict(extra="allow")

    gpu_arch: str
    check: str
    passed: bool
    detail: str


class VerdictRead(BaseModel):
    at: datetime
    step_index: int
    verdict: Literal["continue", "pass", "fail"]
    reason: str
    per_arch: dict[str, Any]

    @classmethod
    def of(cls, row: RolloutVerdict) -> VerdictRead:
        return cls(at=row.at, step_index=row.step_index, verdict=row.verdict,  # type: ignore[arg-type]
                   reason=row.reason, per_arch=row.per_arch)


class ShadowRead(BaseModel):
    percent: float
    seconds: int


class RolloutRead(BaseModel):
    id: int
    model: str
    candidate: str
    baseline: str
    state: RolloutState
    phase: RolloutPhase
    step_index: int
    steps: list[StepRead]
    step_started_at: datetime | None
    started_at: datetime
    finished_at: datetime | None
    started_by: str
    reason: str
    outcome: str
    analysis: dict[str, Any]
    gates: dict[str, Any]
    override_gates: bool
    shadow: ShadowRead | None
    gate_evidence: list[GateEvidence]
    start_revision: int
    latest_verdict: VerdictRead | None
    verdicts: list[VerdictRead] | None = None

    @classmethod
    def of(cls, model: str, row: Rollout, *, latest: RolloutVerdict | None,
           verdicts: list[RolloutVerdict] | None = None) -> RolloutRead:
        return cls(
            id=row.id, model=model, candidate=row.candidate, baseline=row.baseline, state=row.state,
            phase=row.phase, step_index=row.step_index, steps=[StepRead(**s) for s in row.steps],
            step_started_at=row.step_started_at, started_at=row.started_at, finished_at=row.finished_at,
            started_by=row.started_by, reason=row.reason, outcome=row.outcome, analysis=row.analysis,
            gates=row.gates, override_gates=row.override_gates,
            shadow=ShadowRead(**row.shadow) if row.shadow else None,
            gate_evidence=[GateEvidence(**e) for e in row.gate_evidence], start_revision=row.start_revision,
            latest_verdict=VerdictRead.of(latest) if latest else None,
            verdicts=[VerdictRead.of(v) for v in verdicts] if verdicts is not None else None,
        )
