"""API shapes for parity reports (router -> control plane) and merged parity figures."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

# A window's counts are small; the bound keeps sums merged across many routers' windows inside the
# 64 bits JSON encoders (and Postgres) take, so a forged report is a 422, never a 500 later.
Count = Annotated[int, Field(ge=0, le=10**12)]
Error = Annotated[float, Field(ge=0, le=1e300)]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OutputWindow(_Input):
    compared: Count = 0
    shape_mismatch: Count = 0
    dtype_mismatch: Count = 0
    missing: Count = 0
    max_abs_error: Error = 0.0
    sum_abs_error: Error = 0.0
    elements: Count = 0
    top1_agree: Count = 0
    top1_rows: Count = 0
    max_abs_histogram: Annotated[list[Count], Field(max_length=64)] = []


class PairWindow(_Input):
    model: Annotated[str, Field(min_length=1, max_length=128)]
    shadow_version: Annotated[str, Field(min_length=1, max_length=63)]
    primary_version: Annotated[str, Field(min_length=1, max_length=63)]
    primary_gpu_arch: Annotated[str, Field(max_length=32)] = ""
    shadow_gpu_arch: Annotated[str, Field(max_length=32)] = ""
    mirrored: Count = 0
    dropped: Count = 0
    errors: Count = 0
    timeouts: Count = 0
    compared: Count = 0
    unreadable: Count = 0
    outputs: Annotated[dict[str, OutputWindow], Field(max_length=256)] = {}


class ParityReport(_Input):
    router: Annotated[str, Field(min_length=1, max_length=256)]
    window_start: Annotated[float, Field(ge=0, le=1e11)]
    window_end: Annotated[float, Field(ge=0, le=1e11, description="seconds since the epoch")]
    error_bounds: Annotated[list[Annotated[float, Field(ge=0, le=1e300)]], Field(max_length=63)]
    windows: Annotated[list[PairWindow], Field(max_length=4096)]


class ReportAccepted(BaseModel):
    windows: int


class OutputParity(BaseModel):
    name: str
    compared: int
    shape_mismatch: int
    dtype_mismatch: int
    missing: int
    max_abs_error: float
    mean_abs_error: float | None
    top1_agreement: float | None = Field(description="share of rows whose arg-max agrees (last axis)")
    top1_interval: tuple[float, float] | None = Field(description="95% Wilson interval of top1_agreement")
    top1_rows: int
    max_abs_quantiles: dict[str, float | None] = Field(
        description="p50/p90/p99 of the per-request max abs error, as histogram upper bounds")
    max_abs_histogram: list[int]


class PairParity(BaseModel):
    shadow_version: str
    primary_version: str
    primary_gpu_arch: str
    shadow_gpu_arch: str
    mirrored: int
    dropped: int
    errors: int
    timeouts: int
    compared: int
    unreadable: int
    outputs: list[OutputParity]


class ModelParity(BaseModel):
    model: str
    window_seconds: int
    routers: int
    error_bounds: list[float]
    pairs: list[PairParity]


class OutputSeries(BaseModel):
    """One output of one (shadow, primary, gpu_arch of each side) over time: one value per timestamp."""

    shadow_version: str
    primary_version: str
    primary_gpu_arch: str
    shadow_gpu_arch: str
    output: str
    compared: list[int]
    top1_rows: list[int]
    top1_agreement: list[float | None] = Field(description="None where no row was compared")
    max_abs_p99: list[float | None] = Field(description=(
        "an upper bound of the p99 of per-request max abs error: the histogram bound, or the largest error "
        "seen if that is smaller; None where nothing was compared"))
    max_abs_error: list[float | None]


class ParitySeries(BaseModel):
    model: str
    since: float
    until: float
    step_seconds: int
    timestamps: list[float] = Field(description="start of each step, seconds since the epoch")
    error_bounds: list[float]
    lines: list[OutputSeries]
