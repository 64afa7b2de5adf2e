"""API shapes for models, versions, engines, pools and deployments."""

from __future__ import annotations

import enum
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from control_plane.errors import explain_pattern
from control_plane.registry.endpoints import parse_pattern
from control_plane.registry.models import AnonymousPolicy, PoolKind, Precision, VersionStatus
from router.snapshot import DEFAULT_KEY_HEADER

MODEL_NAME = explain_pattern(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
                             "use lowercase letters, digits and '-' (not first or last); at most 63 characters")
VERSION_LABEL = explain_pattern(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$",
                                "use letters, digits, '.', '_' and '-' (not first or last); at most 63 characters")
GPU_ARCH = explain_pattern(r"^sm_[0-9]{2,3}[a-z]?$", "a GPU architecture such as sm_80, sm_86, sm_90 or sm_90a")
SHA256 = explain_pattern(r"^[0-9a-f]{64}$", "64 lowercase hexadecimal digits (a sha256)")
TRT_VERSION = explain_pattern(r"^[0-9]+\.[0-9]+(\.[0-9]+){0,2}$", "a version such as 10.3 or 10.3.0")
HEADER_NAME = explain_pattern(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$",
                              "an HTTP header name: letters, digits and - (no spaces or ':')")
CURRENCY = explain_pattern(r"^[A-Z]{3}$", "an ISO 4217 currency code in capitals, such as USD or EUR")
MAX_GPU_HOURLY_PRICE = 10_000
URI = explain_pattern(r"^[a-z][a-z0-9+.-]*://\S+$", "a URI such as s3://bucket/path, without spaces")
ENGINE_SCHEMES = ("s3", "gs", "https", "http")  # http: only with GRAYROUTE_ALLOW_HTTP_ENGINE_URIS


def _endpoint_pattern(text: str) -> str:
    parse_pattern(text)  # ValueError names the problem
    return text.strip().lower()


def _engine_uri(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.scheme not in ENGINE_SCHEMES:
        raise ValueError("must be an s3://, gs:// or https:// URI (http:// only where the deployment allows it)")
    if "@" in parts.netloc:
        raise ValueError("must not carry user:password (every reader of the registry sees engine URIs)")
    return uri


def _no_userinfo(url: str) -> str:
    if "@" in urlsplit(url).netloc:
        raise ValueError("must not carry user:password (the router would send it on, and readers would see it)")
    return url


EndpointPatternText = Annotated[str, Field(min_length=1, max_length=260), AfterValidator(_endpoint_pattern)]
ModelName = Annotated[str, Field(pattern=MODEL_NAME, description="DNS-safe slug", examples=["resnet50"])]
VersionLabel = Annotated[str, Field(pattern=VERSION_LABEL, examples=["4"])]
GpuArch = Annotated[str, Field(pattern=GPU_ARCH, examples=["sm_80"])]
Sha256 = Annotated[str, Field(pattern=SHA256)]
TrtVersion = Annotated[str, Field(pattern=TRT_VERSION, max_length=32, examples=["10.3.0"])]  # a VARCHAR(32)
Uri = Annotated[str, Field(pattern=URI, max_length=2048, examples=["s3://engines/resnet50/4/sm_80.plan"])]
EngineUri = Annotated[Uri, AfterValidator(_engine_uri)]
# A Kubernetes object name (DNS-1123 subdomain), for Secrets and service accounts.
K8S_NAME = r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$"
# Tensor names as ONNX exporters write them ("input_ids", "images:0", "output/logits").
TENSOR_NAME = r"^[A-Za-z0-9_.:/\[\]-]{1,128}$"
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
    uri: EngineUri
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


class Datatype(enum.StrEnum):
    """Tensor element types as KServe v2 and Triton's metadata name them."""

    BOOL = "BOOL"
    UINT8 = "UINT8"
    UINT16 = "UINT16"
    UINT32 = "UINT32"
    UINT64 = "UINT64"
    INT8 = "INT8"
    INT16 = "INT16"
    INT32 = "INT32"
    INT64 = "INT64"
    FP16 = "FP16"
    FP32 = "FP32"
    FP64 = "FP64"
    BF16 = "BF16"
    BYTES = "BYTES"


class TensorSpec(_Input):
    name: Annotated[str, Field(pattern=TENSOR_NAME, examples=["input"])]
    datatype: Datatype
    shape: Annotated[list[Annotated[int, Field(ge=-1, le=2**31 - 1)]],
                     Field(max_length=16, description="the full shape as the v2 metadata shows it: the batch "
                                                      "dimension first when max_batch_size > 0; -1 is dynamic",
                           examples=[[-1, 3, 224, 224]])]

    @field_validator("shape")
    @classmethod
    def _no_zero(cls, value: list[int]) -> list[int]:
        if any(d == 0 for d in value):
            raise ValueError("dimensions are -1 (dynamic) or at least 1")
        return value


class Signature(_Input):
    """The inputs and outputs of a version's network; Triton's config and warm-up are made from it."""

    inputs: Annotated[list[TensorSpec], Field(min_length=1, max_length=64)]
    outputs: Annotated[list[TensorSpec], Field(min_length=1, max_length=64)]
    max_batch_size: Annotated[int, Field(ge=0, le=65536, description="0: the engine does not batch")] = 0


class DynamicBatching(_Input):
    max_queue_delay_microseconds: Annotated[int, Field(ge=0, le=10_000_000)] = 0
    preferred_batch_size: Annotated[list[Annotated[int, Field(ge=1, le=65536)]], Field(max_length=16)] = []


class VersionCreate(_Input):
    version: VersionLabel
    precision: Precision
    trt_version: TrtVersion
    source_uri: Annotated[str, Field(max_length=2048)] = ""
    source_sha256: Sha256 | None = None
    notes: Annotated[str, Field(max_length=10000)] = ""
    warm: bool = False
    signature: Signature | None = None
    dynamic_batching: Annotated[DynamicBatching | None,
                                Field(description="Triton's dynamic batcher; needs max_batch_size > 0")] = None
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
    signature: dict[str, Any] | None
    dynamic_batching: dict[str, Any] | None
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


class EngineCredentials(_Input):
    """Where a pool's engine fetches take credentials from: a name, never the credentials."""

    service_account: Annotated[str | None, Field(pattern=K8S_NAME, max_length=253, description=(
        "a Kubernetes service account bound to a cloud identity (IRSA, GKE Workload Identity)"))] = None
    secret: Annotated[str | None, Field(pattern=K8S_NAME, max_length=253, description=(
        "a Secret whose keys become the fetch's environment (e.g. AWS_ACCESS_KEY_ID) and files "
        "under /var/run/grayroute/credentials"))] = None

    @model_validator(mode="after")
    def _exactly_one(self) -> EngineCredentials:
        if (self.service_account is None) == (self.secret is None):
            raise ValueError("give exactly one of service_account or secret")
        return self


class PoolPut(_Input):
    gpu_arch: GpuArch
    kind: PoolKind
    namespace: Annotated[str | None, Field(pattern=MODEL_NAME)] = None
    node_selector: dict[Annotated[str, Field(max_length=253)], Annotated[str, Field(max_length=63)]] = {}
    runtime_image: Annotated[str | None, Field(max_length=512, examples=["nvcr.io/nvidia/tritonserver:24.08-py3"])] = None
    trt_version: TrtVersion
    allowed_endpoints: Annotated[list[EndpointPatternText], Field(
        max_length=64, description="external pools: host, host:port, *.domain, IP or CIDR patterns that backend "
                                   "URLs must match; empty admits none")] = []
    engine_credentials: EngineCredentials | None = None
    # Bounded well inside the NUMERIC(12, 4) column; no GPU-hour costs more.
    gpu_hourly_price: Annotated[Decimal | None, Field(ge=0, le=MAX_GPU_HOURLY_PRICE, decimal_places=4, description=(
        "what one GPU-hour of this pool costs, in currency; the version report's cost figures"),
        examples=["2.50"])] = None
    currency: Annotated[str | None, Field(pattern=CURRENCY, description="ISO 4217 code, required with a price",
                                          examples=["USD"])] = None
    gpus_per_replica: Annotated[int, Field(ge=1, le=64, description="GPUs one replica holds (and is billed for)")] = 1


class PoolRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    gpu_arch: str
    kind: PoolKind
    namespace: str | None
    node_selector: dict[str, str]
    runtime_image: str | None
    trt_version: str
    allowed_endpoints: list[str]
    engine_credentials: dict[str, str] | None
    gpu_hourly_price: float | None
    currency: str | None
    gpus_per_replica: int
    created_at: datetime
    updated_at: datetime


class EndpointsPut(_Input):
    pool: Annotated[str, Field(pattern=MODEL_NAME)]
    urls: Annotated[list[Annotated[str, Field(pattern=r"^https?://[^\s/]+(/\S*)?$", max_length=512),
                                   AfterValidator(_no_userinfo)]],
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
