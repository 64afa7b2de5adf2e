"""API shapes: a router's window report, and a model's merged per-version figures."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from router.stats import LATENCY_BOUNDS_MS

# Bounded so a window is stored exactly (orjson writes at most 64-bit integers) and sums stay finite.
Count = Annotated[int, Field(ge=0, le=2**53 - 1)]


class VersionWindow(BaseModel):
    # A stored Infinity comes back as null and breaks every later read of the model's stats.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    requests: Count
    errors: Count = 0
    fallbacks: Count = 0
    latency_sum_ms: Annotated[float, Field(ge=0, le=1e15)] = 0.0
    buckets: Annotated[list[Count], Field(description="latency histogram over bounds_ms, plus one overflow bucket")]

    @field_validator("buckets")
    @classmethod
    def _width(cls, buckets: list[int]) -> list[int]:
        if len(buckets) != len(LATENCY_BOUNDS_MS) + 1:
            raise ValueError(f"must have {len(LATENCY_BOUNDS_MS) + 1} counts (the shared bucket bounds)")
        return buckets

    @model_validator(mode="after")
    def _consistent(self) -> VersionWindow:
        if self.errors > self.requests or self.fallbacks > self.requests:
            raise ValueError("errors and fallbacks cannot exceed requests")
        if sum(self.buckets) != self.requests:
            raise ValueError("histogram counts must add up to requests")
        return self


class StatsReport(BaseModel):
    """One router's closed window (``router.reporter`` builds it)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # NaN is no Redis score

    router: Annotated[str, Field(min_length=1, max_length=256)]
    window_start: float
    window_end: float
    bounds_ms: list[float] = list(LATENCY_BOUNDS_MS)
    models: dict[Annotated[str, Field(max_length=63)], dict[Annotated[str, Field(max_length=63)], VersionWindow]]

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


class VersionStats(BaseModel):
    version: str
    requests: int
    requests_per_second: float
    errors: int
    error_rate: float = Field(description="errors / requests (5xx answers, including the router's own)")
    fallbacks: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    buckets: list[int] = Field(description="merged latency histogram over bounds_ms")


class ModelStats(BaseModel):
    model: str
    window_seconds: int
    routers: int = Field(description="distinct routers that reported in the window")
    bounds_ms: list[float]
    versions: list[VersionStats]
