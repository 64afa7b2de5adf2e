"""API shapes: a router's window report, and a model's merged figures (per assigned version, per
(version, pool, gpu_arch), and as time series)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from router.stats import LATENCY_BOUNDS_MS

# Bounded so a window is stored exactly (orjson writes at most 64-bit integers) and sums stay finite.
Count = Annotated[int, Field(ge=0, le=2**53 - 1)]
# Version, pool and architecture labels become parts of stored field names: no control characters.
Label = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[^\x00-\x1f\x7f]+$")]
ErrorKind = Literal["connect", "connect_timeout", "timeout", "protocol", "stale", "http_5xx", "no_backend", "shed"]


class _Counts(BaseModel):
    # A stored Infinity comes back as null and breaks every later read of the model's stats.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    requests: Count
    errors: Count = 0
    fallbacks: Count = 0
    latency_sum_ms: Annotated[float, Field(ge=0, le=1e15)] = 0.0
    buckets: Annotated[list[Count], Field(description="latency histogram over bounds_ms, plus one overflow bucket")]
    error_kinds: dict[ErrorKind, Count] = Field(default_factory=dict, description="errors by kind")

    @field_validator("buckets")
    @classmethod
    def _width(cls, buckets: list[int]) -> list[int]:
        if len(buckets) != len(LATENCY_BOUNDS_MS) + 1:
            raise ValueError(f"must have {len(LATENCY_BOUNDS_MS) + 1} counts (the shared bucket bounds)")
        return buckets

    @model_validator(mode="after")
    def _consistent(self) -> _Counts:
        if self.errors > self.requests or self.fallbacks > self.requests:
            raise ValueError("errors and fallbacks cannot exceed requests")
        if sum(self.buckets) != self.requests:
            raise ValueError("histogram counts must add up to requests")
        if sum(self.error_kinds.values()) > self.errors:
            raise ValueError("error_kinds cannot add up to more than errors")
        return self


class ServedWindow(_Counts):
    """The part of an assigned version's window that one (version, pool, gpu_arch) served."""

    version: Label
    pool: Annotated[str, Field(max_length=63, pattern=r"^[^\x00-\x1f\x7f]*$")] = ""
    gpu_arch: Annotated[str, Field(max_length=63, pattern=r"^[^\x00-\x1f\x7f]*$")] = ""


class VersionWindow(_Counts):
    """An assigned version's window; ``served`` says who served its requests (absent: the version itself)."""

    served: list[ServedWindow] | None = Field(default=None, max_length=1000)

    @model_validator(mode="after")
    def _served_within(self) -> VersionWindow:
        if not self.served:
            return self
        for name in ("requests", "errors", "fallbacks"):
            if sum(getattr(part, name) for part in self.served) > getattr(self, name):
                raise ValueError(f"served parts add up to more {name} than the window has")
        for i, count in enumerate(self.buckets):
            if sum(part.buckets[i] for part in self.served) > count:
                raise ValueError("served parts add up to more than the window's histogram")
        return self


class StatsReport(BaseModel):
    """One router's closed window (``router.reporter`` builds it)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # NaN is no Redis score

    router: Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$")]
    window_start: Annotated[float, Field(ge=0, le=1e11)]
    window_end: Annotated[float, Field(ge=0, le=1e11, description="seconds since the epoch")]
    bounds_ms: list[float] = list(LATENCY_BOUNDS_MS)
    models: dict[Annotated[str, Field(max_length=63)], dict[Label, VersionWindow]]

    @field_validator("bounds_ms")
    @classmethod
    def _shared_bounds(cls, bounds: list[float]) -> list[float]:
        if tuple(bounds) != LATENCY_BOUNDS_MS:
            raise ValueError("histogram bounds differ from this control plane's; upgrade the router")
        return bounds

    @model_validator(mode="after")
    def _ordered(self) -> StatsReport:
        if self.window_end < self.window_start:
            raise ValueError("window_end is before window_start")
        return self


class ReportAccepted(BaseModel):
    models: int


class ServedShare(BaseModel):
    version: str
    pool: str
    gpu_arch: str
    requests: int
    errors: int


class VersionStats(BaseModel):
    """Figures of the requests *assigned* to a version, wherever they ended up."""

    version: str
    requests: int = Field(description="requests assigned to this version (split, rule or explicit)")
    requests_per_second: float
    share_of_requests: float = Field(description="this version's requests / all the model's requests")
    errors: int
    error_rate: float = Field(description="errors / requests (5xx answers, including the router's own)")
    error_kinds: dict[str, int] = Field(description="errors by kind: connect, connect_timeout, timeout, protocol, "
                                                    "stale, http_5xx, no_backend, shed")
    fallbacks: int = Field(description="requests another version served because this one had no backend")
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    buckets: list[int] = Field(description="merged latency histogram over bounds_ms")
    served_by: list[ServedShare] = Field(description="who served these requests, per (version, pool, gpu_arch)")


class DeploymentStats(BaseModel):
    """Figures of the requests one (version, pool, gpu_arch) served, whoever they were assigned to."""

    version: str
    pool: str
    gpu_arch: str
    requests: int
    errors: int
    error_rate: float
    error_kinds: dict[str, int]
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    mean_ms: float | None


class ModelStats(BaseModel):
    model: str
    window_seconds: int
    routers: int = Field(description="distinct routers that reported in the window")
    bounds_ms: list[float]
    versions: list[VersionStats] = Field(description="per assigned version")
    deployments: list[DeploymentStats] = Field(description="per serving (version, pool, gpu_arch)")


class SeriesLine(BaseModel):
    """One assigned version over time: one value per timestamp (None where it had no requests)."""

    version: str
    requests: list[int]
    errors: list[int]
    fallbacks: list[int]
    error_rate: list[float | None]
    p50_ms: list[float | None]
    p99_ms: list[float | None]


class DeploymentLine(BaseModel):
    """One serving (version, pool, gpu_arch) over time."""

    version: str
    pool: str
    gpu_arch: str
    requests: list[int]
    errors: list[int]
    error_rate: list[float | None]
    p50_ms: list[float | None]
    p99_ms: list[float | None]


class ModelSeries(BaseModel):
    model: str
    since: float
    until: float
    step_seconds: int
    slot_seconds: int = Field(description="resolution the windows were merged at")
    timestamps: list[float] = Field(description="start of each step, seconds since the epoch")
    routers: list[int] = Field(description="distinct routers that reported in each step")
    versions: list[SeriesLine] = Field(description="per assigned version")
    deployments: list[DeploymentLine] = Field(description="per serving (version, pool, gpu_arch)")
