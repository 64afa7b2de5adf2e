"""API shapes for models, versions, engines, pools and deployments."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from control_plane.registry.models import AnonymousPolicy, PoolKind, Precision, VersionStatus
from router.snapshot import DEFAULT_KEY_HEADER

MODEL_NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
VERSION_LABEL = r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$"
GPU_ARCH = r"^sm_[0-9]{2,3}[a-z]?$"
SHA256 = r"^[0-9a-f]{64}$"
TRT_VERSION = r"^[0-9]+\.[0-9]+(\.[0-9]+){0,2}$"
HEADER_NAME = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"
URI = r"^[a-z][a-z0-9+.-]*://\S+$"

ModelName = Annotated[str, Field(pattern=MODEL_NAME, description="DNS-safe slug", examples=["resnet50"])]
VersionLabel = Annotated[str, Field(pattern=VERSION_LABEL, examples=["4"])]
GpuArch = Annotated[str, Field(pattern=GPU_ARCH, examples=["sm_80"])]
Sha256 = Annotated[str, Field(pattern=SHA256)]
TrtVersion = Annotated[str, Field(pattern=TRT_VERSION, max_length=32, examples=["10.3.0"])]  # a VARCHAR(32)
Uri = Annotated[str, Field(pattern=URI, max_length=2048, examples=["s3://engines/resnet50/4/sm_80.plan"])]
Replicas = dict[Annotated[str, Field(pattern=MODEL_NAME)], Annotated[int, Field(ge=1, le=1000)]]


def refuse_nul(value: Any) -> Any:
    """Postgres text and JSON cannot hold NUL: refuse it here, where the error can name the field."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("must not contain NUL (\\u0000) characters")
    elif isinstance(value, dict):
        for key, item in value.items():
            refuse_nul(key)
            refuse_nul(item)
    elif isinstance(value, list):
        for item in value:
            refuse_nul(item)
    return value


class _Input(BaseModel):
    # Infinity and NaN (which Python's JSON parser accepts) cannot be stored as JSON.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        return refuse_nul(value)


class ModelCreate(_Input):
    name: ModelName
    description: Annotated[str, Field(max_length=2000)] = ""
    key_header: Annotated[str, Field(pattern=HEADER_NAME, max_length=128)] = DEFAULT_KEY_HEADER
    salt: Annotated[str | None, Field(min_length=1, max_length=256, description="defaults to the name")] = None
    anonymous: AnonymousPolicy = AnonymousPolicy.WEIGHTED
    replicas: Annotated[Replicas, Field(description="per-pool replica budget")] = {}

    @field_validator("key_header")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()


class ModelUpdate(_Input):
    description: Annotated[str | None, Field(max_length=2000)] = None
    key_header: Annotated[str | None, Field(pattern=HEADER_NAME, max_length=128)] = None
    salt: Annotated[str | None, Field(min_length=1, max_length=256,
                                      description="changing it reshuffles every user (a rebucket)")] = None
    anonymous: AnonymousPolicy | None = None
    replicas: Replicas | None = None
    reason: Annotated[str, Field(max_length=2000)] = ""

    @field_validator("key_header")
    @classmethod
    def _lower(cls, value: str | None) -> str | None:
        return value.lower() if value else value


class Benchmark(_Input):
    """Figures as ``trtexec`` reports them."""

    p50_ms: Annotated[float | None, Field(ge=0)] = None
    p99_ms: Annotated[float | None, Field(ge=0)] = None
    throughput: Annotated[float | None, Field(ge=0, description="inferences per second")] = None
    gpu_mem_mb: Annotated[float | None, Field(ge=0)] = None


class EngineCreate(_Input):
    gpu_arch: GpuArch
    uri: Uri
    sha256: Sha256
    size_bytes: Annotated[int | None, Field(ge=0, le=2**63 - 1)] = None  # a BIGINT column
    trt_version: TrtVersion | None = Field(None, description="defaults to the version's")
    benchmark: Benchmark | None = None


class EngineRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    gpu_arch: str
    uri: str
    sha256: str
    size_bytes: int | None
    trt_version: str
    benchmark: dict[str, Any] | None
    created_at: datetime


class VersionCreate(_Input):
    version: VersionLabel
    precision: Precision
    trt_version: TrtVersion
    source_uri: Annotated[str, Field(max_length=2048)] = ""
    source_sha256: Sha256 | None = None
    notes: Annotated[str, Field(max_length=10000)] = ""
    warm: bool = False
    engines: Annotated[list[EngineCreate], Field(max_length=32)] = []


class VersionUpdate(_Input):
    notes: Annotated[str | None, Field(max_length=10000)] = None
    warm: bool | None = None


class VersionRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    version: str
    precision: str
    trt_version: str
    source_uri: str
    source_sha256: str | None
    status: VersionStatus
    notes: str
    warm: bool
    registered_by: str
    created_at: datetime
    retired_at: datetime | None
    engines: list[EngineRead]


class ModelRead(BaseModel):
    name: str
    description: str
    key_header: str
    salt: str
    anonymous: AnonymousPolicy
    replicas: dict[str, int]
    created_by: str
    created_at: datetime
    updated_at: datetime
    versions: list[str] = []
    default_version: str | None = None
    traffic_revision: int = 0


class PoolPut(_Input):
    gpu_arch: GpuArch
    kind: PoolKind
    namespace: Annotated[str | None, Field(pattern=MODEL_NAME)] = None
    node_selector: dict[Annotated[str, Field(max_length=253)], Annotated[str, Field(max_length=63)]] = {}
    runtime_image: Annotated[str | None, Field(max_length=512, examples=["nvcr.io/nvidia/tritonserver:24.08-py3"])] = None
    trt_version: TrtVersion


class PoolRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    gpu_arch: str
    kind: PoolKind
    namespace: str | None
    node_selector: dict[str, str]
    runtime_image: str | None
    trt_version: str
    created_at: datetime
    updated_at: datetime


class EndpointsPut(_Input):
    pool: Annotated[str, Field(pattern=MODEL_NAME)]
    urls: Annotated[list[Annotated[str, Field(pattern=r"^https?://[^\s/]+(/\S*)?$", max_length=512)]],
                    Field(max_length=256)]


class DeploymentRead(BaseModel):
    version: str
    pool: str
    gpu_arch: str
    desired_replicas: int
    ready_replicas: int
    endpoints: list[str]
    phase: str
    message: str
    draining_since: datetime | None
    updated_at: datetime
