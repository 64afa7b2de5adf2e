"""API shapes of the version report: baseline against candidate, per GPU architecture, every figure with
where it came from and how much evidence stands behind it."""

from __future__ import annotations

import enum
from datetime import datetime

from pydantic import BaseModel, Field

from control_plane.parity.schemas import PairParity


class Source(enum.StrEnum):
    TRTEXEC = "trtexec"  # the engine's registered benchmark
    LIVE = "live"  # the routers' merged windows
    COMPUTED = "computed"  # from other figures of this report (cost, GPUs needed)
    NONE = "none"  # no figure: ``note`` says why


class Better(enum.StrEnum):
    LOWER = "lower"
    HIGHER = "higher"
    NEITHER = "neither"  # e.g. requests/s: follows the split, says nothing of the engine


class Figure(BaseModel):
    """One number, or none with the reason; never a zero standing in for "unknown"."""

    value: float | None = Field(description="null: not enough data (see note)")
    source: Source
    basis: str = Field(description="what the figure was read or computed from, in words")
    sample_size: int | None = Field(description="requests behind a live figure; trtexec runs behind a benchmark; "
                                                "null when no figure")
    sample_unit: str = Field(description="what sample_size counts: requests, trtexec runs")
    note: str | None = Field(default=None, description="why there is no figure, or a caveat")


class Metric(BaseModel):
    """A figure of the baseline and of the candidate, side by side."""

    metric: str = Field(description="stable key, e.g. trtexec_p99_ms, cost_per_million")
    label: str
    unit: str
    better: Better
    baseline: Figure
    candidate: Figure
    change_percent: float | None = Field(description="(candidate - baseline) / baseline x 100; null without both")


class PoolCost(BaseModel):
    pool: str
    gpu_hourly_price: float
    currency: str
    gpus_per_replica: int


class ArchitectureReport(BaseModel):
    gpu_arch: str
    pools: list[str] = Field(description="pools of this architecture")
    cost_pool: PoolCost | None = Field(description="the priced pool the cost figures use: the one carrying the "
                                                   "most of the two versions' requests, else the first by name")
    cost_note: str | None = Field(description="why there are no cost figures")
    traffic: Figure = Field(description="requests per second served on this architecture now, all versions")
    metrics: list[Metric]
    parity: list[PairParity] = Field(description="shadow comparisons between the two versions on this "
                                                 "architecture (primary's side)")
    parity_note: str | None


class SkippedArchitecture(BaseModel):
    gpu_arch: str
    reason: str


class VersionReport(BaseModel):
    model: str
    baseline: str
    candidate: str
    baseline_precision: str
    candidate_precision: str
    window_seconds: int = Field(description="live figures cover this many seconds up to generated_at")
    min_requests: int = Field(description="requests a version needs on an architecture before its live latency, "
                                          "error rate and throughput per replica are shown")
    generated_at: datetime
    shadowed: bool = Field(description="the live policy mirrors requests to one of the two versions")
    architectures: list[ArchitectureReport] = Field(description="architectures both versions have an engine for")
    skipped: list[SkippedArchitecture] = Field(description="architectures only one of the two has an engine for")
