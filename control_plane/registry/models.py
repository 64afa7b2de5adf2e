"""Registry tables: models, their versions, per-architecture engines, GPU pools."""

from __future__ import annotations

import enum
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Numeric, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from control_plane.db import Base, str_enum, utcnow
from router.snapshot import DEFAULT_KEY_HEADER


class Precision(enum.StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"
    BF16 = "bf16"
    FP8 = "fp8"


class VersionStatus(enum.StrEnum):
    REGISTERED = "registered"
    ACTIVE = "active"
    RETIRED = "retired"


class PoolKind(enum.StrEnum):
    KUBERNETES = "kubernetes"
    LOCAL = "local"
    EXTERNAL = "external"


class AnonymousPolicy(enum.StrEnum):
    WEIGHTED = "weighted"
    DEFAULT = "default"


class Model(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    key_header: Mapped[str] = mapped_column(String(128), default=DEFAULT_KEY_HEADER)
    salt: Mapped[str] = mapped_column(String(256))
    anonymous: Mapped[AnonymousPolicy] = mapped_column(str_enum(AnonymousPolicy, 16), default=AnonymousPolicy.WEIGHTED)
    replicas: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The actor that alone may change the traffic policy now ("rollout:<id>" while a rollout runs); None: anyone
    # with traffic:write. A column here rather than a query of rollouts, so traffic (below rollouts) can check it.
    traffic_held_by: Mapped[str | None] = mapped_column(String(128), default=None)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    versions: Mapped[list[Version]] = relationship(
        back_populates="model", order_by="Version.id", cascade="all, delete-orphan"
    )


class Version(Base):
    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("model_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    version: Mapped[str] = mapped_column(String(63))
    precision: Mapped[Precision] = mapped_column(str_enum(Precision, 8))
    trt_version: Mapped[str] = mapped_column(String(32))
    source_uri: Mapped[str] = mapped_column(Text, default="")
    source_sha256: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[VersionStatus] = mapped_column(str_enum(VersionStatus, 16), default=VersionStatus.REGISTERED)
    notes: Mapped[str] = mapped_column(Text, default="")
    # Deployed ahead of traffic so its engines are loaded and checked first.
    warm: Mapped[bool] = mapped_column(default=False)
    # Inputs, outputs and max_batch_size of the network. Every engine of a version is built from
    # one ONNX source, so they share it; Triton's config and its warm-up sample are made from it.
    signature: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    # Triton's dynamic batcher for this version (max queue delay, preferred sizes); None = off.
    dynamic_batching: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    registered_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(default=None)

    model: Mapped[Model] = relationship(back_populates="versions")
    engines: Mapped[list[Engine]] = relationship(
        back_populates="version", order_by="Engine.gpu_arch", cascade="all, delete-orphan"
    )


class Engine(Base):
    __tablename__ = "engines"
    __table_args__ = (UniqueConstraint("version_id", "gpu_arch"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"), index=True)
    gpu_arch: Mapped[str] = mapped_column(String(16))
    uri: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)  # engines pass 2 GiB
    trt_version: Mapped[str] = mapped_column(String(32))
    # trtexec figures: p50_ms, p99_ms, throughput, gpu_mem_mb.
    benchmark: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    version: Mapped[Version] = relationship(back_populates="engines")


class Pool(Base):
    __tablename__ = "pools"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    gpu_arch: Mapped[str] = mapped_column(String(16))
    kind: Mapped[PoolKind] = mapped_column(str_enum(PoolKind, 16))
    namespace: Mapped[str | None] = mapped_column(String(63), default=None)
    node_selector: Mapped[dict[str, Any]] = mapped_column(default=dict)
    runtime_image: Mapped[str | None] = mapped_column(Text, default=None)
    trt_version: Mapped[str] = mapped_column(String(32))
    # External pools: host[:port] patterns backend URLs must match (registry/endpoints.py); empty admits none.
    allowed_endpoints: Mapped[list[Any]] = mapped_column(default=list)
    # Where engine fetches get credentials: {"service_account": name} or {"secret": name}; names only.
    engine_credentials: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    # Optional cost of one GPU-hour (ISO 4217 currency) and GPUs a replica holds: the version report's cost figures.
    gpu_hourly_price: Mapped[Decimal | None] = mapped_column(Numeric(12, 4), default=None)
    currency: Mapped[str | None] = mapped_column(String(3), default=None)
    gpus_per_replica: Mapped[int] = mapped_column(default=1, server_default="1")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
