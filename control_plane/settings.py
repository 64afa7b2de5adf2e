"""The one settings object: the only reader of the environment in the control plane."""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Signing key of the embedded demo; refused anywhere else.
DEMO_SECRET_KEY = "grayroute-embedded-demo-secret-not-for-production"
EMBEDDED_DATABASE_URL = "sqlite+aiosqlite:///grayroute.db"


MIN_TOKEN_BITS = 128


class SettingsError(ValueError):
    """Configuration that cannot be run."""


def token_strength_bits(token: str) -> float:
    """A generous estimate of a secret's strength: its length times log2 of the character classes it uses.

    It cannot see that a long phrase is guessable, but it refuses what is plainly short or repetitive.
    """
    classes = ((str.islower, 26), (str.isupper, 26), (str.isdigit, 10))
    alphabet = sum(size for test, size in classes if any(test(c) for c in token))
    if any(not (c.islower() or c.isupper() or c.isdigit()) for c in token):
        alphabet += 33  # punctuation and the rest
    if len(set(token)) < 8:  # "aaaa…" or "abab…" is not random, whatever its length
        return 0.0
    return len(token) * math.log2(alphabet) if alphabet > 1 else 0.0


class LocalFault(BaseModel):
    """Faults the local target injects into one version's engine servers (demos and tests of rollouts)."""

    model_config = ConfigDict(extra="forbid")

    error_rate: Annotated[float, Field(ge=0, le=1)] = 0.0
    extra_latency_ms: Annotated[float, Field(ge=0, le=60_000)] = 0.0


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRAYROUTE_", extra="ignore")

    database_url: str = EMBEDDED_DATABASE_URL
    redis_url: str | None = None
    secret_key: SecretStr = SecretStr(DEMO_SECRET_KEY)
    bootstrap_admin_token: SecretStr | None = None
    # Lets a deployment hand routers a token it generated itself (Helm: from a Secret).
    router_token: SecretStr | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Postgres: pool sizing and how long a request may wait for the database.
    db_pool_size: int = 10
    db_max_overflow: int = 20
    db_timeout_seconds: float = 5.0
    # UI session lifetime.
    session_max_age_seconds: int = 12 * 3600
    # Secure cookies need HTTPS; the embedded demo runs on plain loopback HTTP.
    cookie_secure: bool = False
    # Stats merged from routers are kept this long.
    stats_retention_seconds: int = 6 * 3600
    state_dir: Path = Path(".grayroute")
    # Largest request body accepted (413 above), checked from Content-Length and while a chunked body
    # streams. 1 MiB holds the largest traffic policy the schema admits (about 0.55 MB) twice over.
    max_request_bytes: Annotated[int, Field(ge=4096)] = 1 << 20
    # Engines are fetched over TLS or from object stores; plain http:// only where a deployment says
    # its artifact store sits on a private network (see README, Security).
    allow_http_engine_uris: bool = False
    # Rollout events (started, step advanced, paused, rolled back, succeeded...) are POSTed here as JSON.
    webhook_url: str | None = None
    # The rollout controller: how often it looks (seconds), and whether this process runs one at all
    # (replicas elect one leader among themselves, so every replica may).
    rollout_tick_seconds: Annotated[float, Field(gt=0, le=60)] = 2.0
    rollout_controller: bool = True
    # Local target only: faults per version ("4") or per version on one pool ("4@pool-b"), as JSON, e.g.
    # '{"4": {"error_rate": 0.05}, "4@pool-b": {"extra_latency_ms": 20}}'. For demos and tests of rollouts.
    local_faults: dict[str, LocalFault] = Field(default_factory=dict)

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, url: str) -> str:
        if not url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
            raise ValueError("must start with postgresql+asyncpg:// or sqlite+aiosqlite://")
        return url

    @field_validator("redis_url", "webhook_url")
    @classmethod
    def _empty_is_none(cls, url: str | None) -> str | None:
        return url or None

    @field_validator("bootstrap_admin_token", "router_token")
    @classmethod
    def _strong_token(cls, token: SecretStr | None) -> SecretStr | None:
        if token is None or not token.get_secret_value():
            return None
        bits = token_strength_bits(token.get_secret_value())
        if bits < MIN_TOKEN_BITS:
            raise ValueError(f"too weak (about {bits:.0f} bits, needs {MIN_TOKEN_BITS}): use at least 22 random "
                             "characters, e.g. the output of `openssl rand -base64 32`")
        return token

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def uses_demo_secret(self) -> bool:
        return self.secret_key.get_secret_value() == DEMO_SECRET_KEY

    @property
    def embedded(self) -> bool:
        """One machine, no services: SQLite and in-process notification."""
        return self.is_sqlite and self.redis_url is None

    @model_validator(mode="after")
    def _no_demo_secret_in_production(self) -> Settings:
        if not self.embedded and self.uses_demo_secret:
            raise SettingsError(
                "GRAYROUTE_SECRET_KEY must be set when running on Postgres or Redis; "
                "the built-in key is only for the embedded demo"
            )
        if len(self.secret_key.get_secret_value()) < 16:
            raise SettingsError("GRAYROUTE_SECRET_KEY must be at least 16 characters")
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()


class ClientSettings(BaseSettings):
    """What API clients (``grayroute register`` in CI) read: where the control plane is, and a token."""

    model_config = SettingsConfigDict(env_prefix="GRAYROUTE_", extra="ignore")

    control_plane_url: str = "http://127.0.0.1:8080"
    token: SecretStr | None = None


class FetchSettings(BaseSettings):
    """What ``grayroute engine fetch`` reads besides the cloud SDKs' own variables (AWS_*, GOOGLE_*)."""

    model_config = SettingsConfigDict(env_prefix="GRAYROUTE_FETCH_", extra="ignore")

    # Sent as "Authorization: Bearer …" to https:// artifact stores (from a pool's credentials Secret).
    bearer_token: SecretStr | None = None
