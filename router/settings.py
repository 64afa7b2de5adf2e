"""The router's settings: the only place in the router that reads the environment.

Secrets and shared endpoints come from the environment (``GRAYROUTE_TOKEN``,
``GRAYROUTE_REDIS_URL``); everything else from command-line options.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

# Client headers never forwarded to backends unless listed in ``forward_headers``:
# a backend (any host a publisher registers) must not receive users' credentials.
CREDENTIAL_HEADERS = frozenset({"authorization", "cookie"})


class RouterSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    control_plane: str | None = None  # base URL, e.g. http://grayroute:8080
    snapshot_file: Path | None = None
    token: SecretStr | None = None
    redis_url: str | None = None
    max_body_bytes: Annotated[int, Field(gt=0)] = 64 * 1024 * 1024
    max_response_bytes: Annotated[int, Field(gt=0)] = 256 * 1024 * 1024
    # Client-side limits of the built-in HTTP server (README "Security"): like nginx's
    # large_client_header_buffers, checked on the raw bytes before the parser buffers them.
    max_line_bytes: Annotated[int, Field(ge=256)] = 8 * 1024  # request line (414) or one header line (431)
    max_header_bytes: Annotated[int, Field(ge=256)] = 64 * 1024  # request line and headers together (431)
    max_headers: Annotated[int, Field(ge=1)] = 100  # header count (431)
    header_timeout: Annotated[float, Field(gt=0)] = 10.0  # a request's head must arrive within it (408)
    body_timeout: Annotated[float, Field(gt=0)] = 60.0  # its body within this, once the head is in (408)
    max_client_connections: Annotated[int, Field(ge=1)] = 4096  # per worker; beyond: 503
    forward_headers: tuple[str, ...] = ()  # credential headers passed to backends anyway
    upstream_timeout: Annotated[float, Field(gt=0)] = 60.0
    connect_timeout: Annotated[float, Field(gt=0)] = 1.0
    eject_after: Annotated[int, Field(ge=1)] = 3  # consecutive failures (a refused connection ejects at once)
    max_ejected_share: Annotated[float, Field(ge=0, le=1)] = 0.5  # of a version's backends; never the last one
    max_connections: Annotated[int, Field(ge=1)] = 64  # per backend (and worker)
    max_pending: Annotated[int, Field(ge=0)] = 256  # requests waiting for a connection, per backend
    queue_timeout: Annotated[float, Field(gt=0)] = 1.0  # longest wait for a connection before a 503
    retry_budget: Annotated[float, Field(ge=0, le=1)] = 0.2  # retries as a share of requests
    stats_spool: Annotated[int, Field(ge=0)] = 720  # reports kept while Redis and the control plane are down
    poll_interval: Annotated[float, Field(gt=0)] = 1.0  # HTTP polling while Redis is unreachable
    stats_interval: Annotated[float, Field(gt=0)] = 5.0
    # Shadow traffic (README "Shadow traffic"): mirrors in flight at once, the largest request or primary
    # answer mirrored, and the time a shadow backend has to answer.
    shadow_max_inflight: Annotated[int, Field(ge=0)] = 32
    shadow_max_bytes: Annotated[int, Field(gt=0)] = 1024 * 1024
    shadow_timeout: Annotated[float, Field(gt=0)] = 10.0
    router_id: str = ""  # names this router in stats reports; default host:pid
    metrics_dir: Path | None = None  # set by the supervisor when several workers share a port
    http: Literal["lean", "uvicorn"] = "lean"  # the HTTP server under the ASGI app (README: measured)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("control_plane")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("control plane URL must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("forward_headers")
    @classmethod
    def _credentials_only(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        names = tuple(name.strip().lower() for name in value)
        for name in names:
            if name not in CREDENTIAL_HEADERS:
                raise ValueError(
                    f"forward_headers: {name!r} is not a header the router strips; "
                    f"only {', '.join(sorted(CREDENTIAL_HEADERS))} can be forwarded"
                )
        return names

    @model_validator(mode="after")
    def _line_fits_header(self) -> RouterSettings:
        if self.max_header_bytes < self.max_line_bytes:
            raise ValueError("max_header_bytes must be at least max_line_bytes")
        return self

    @model_validator(mode="after")
    def _fixed_port_for_workers(self) -> RouterSettings:
        if self.workers > 1 and self.port == 0:
            raise ValueError("several workers share one port: give --port explicitly")
        return self

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **options: Any) -> RouterSettings:
        """Options from the command line, secrets from the environment."""
        env = os.environ if environ is None else environ
        values = {k: v for k, v in options.items() if v is not None}
        if env.get("GRAYROUTE_TOKEN"):
            values.setdefault("token", env["GRAYROUTE_TOKEN"])
        if env.get("GRAYROUTE_REDIS_URL"):
            values.setdefault("redis_url", env["GRAYROUTE_REDIS_URL"])
        return cls(**values)

    def identity(self) -> str:
        if not self.router_id:
            return f"{socket.gethostname()}:{os.getpid()}"
        # several workers report separately: one shared name would make their windows look like one router's
        return f"{self.router_id}:{os.getpid()}" if self.workers > 1 else self.router_id
