"""The one settings object: the only reader of the environment in the control plane."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Signing key of the embedded demo; refused anywhere else.
DEMO_SECRET_KEY = "grayroute-embedded-demo-secret-not-for-production"
EMBEDDED_DATABASE_URL = "sqlite+aiosqlite:///grayroute.db"


class SettingsError(ValueError):
    """Configuration that cannot be run."""


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

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, url: str) -> str:
        if not url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
            raise ValueError("must start with postgresql+asyncpg:// or sqlite+aiosqlite://")
        return url

    @field_validator("redis_url")
    @classmethod
    def _empty_is_none(cls, url: str | None) -> str | None:
        return url or None

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def embedded(self) -> bool:
        """One machine, no services: SQLite and in-process notification."""
        return self.is_sqlite and self.redis_url is None

    @model_validator(mode="after")
    def _no_demo_secret_in_production(self) -> Settings:
        if not self.embedded and self.secret_key.get_secret_value() == DEMO_SECRET_KEY:
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
