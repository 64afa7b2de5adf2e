"""Database engine, sessions and the declarative base (naming convention for Alembic)."""

from __future__ import annotations

import enum
import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Enum, MetaData, event
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

from control_plane.settings import Settings

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on Postgres and SQLite alike (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[Any]: JSON()}


async def flush_or_raise(session: AsyncSession, conflict: Exception) -> None:
    """Flush; if a unique constraint says a concurrent writer got there first, roll back and raise ``conflict``."""
    try:
        await session.flush()
    except IntegrityError:
        await session.rollback()
        raise conflict from None


# At DEBUG these print query parameters and result rows, token hashes among them (aiosqlite logs every
# call with its arguments). Called once the process has set up logging: with GRAYROUTE_LOG_LEVEL=DEBUG
# they stay at INFO, where SQLAlchemy's statement log shows no parameters (``hide_parameters``).
_DRIVER_LOGGERS = ("sqlalchemy.engine", "sqlalchemy.pool", "sqlalchemy.dialects", "aiosqlite", "asyncpg")


def _cap_driver_logs() -> None:
    for name in _DRIVER_LOGGERS:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.INFO:
            logger.setLevel(logging.INFO)


def create_engine(settings: Settings) -> AsyncEngine:
    _cap_driver_logs()
    if settings.is_sqlite:
        engine = create_async_engine(settings.database_url, connect_args={"timeout": settings.db_timeout_seconds},
                                     hide_parameters=True)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=5000")
            cursor.close()

        return engine
    return create_async_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_timeout_seconds,
        # A connection that died with a Postgres restart is replaced, not handed out.
        pool_pre_ping=True,
        hide_parameters=True,  # nor in error messages: a failed token lookup would print the hash
        connect_args={"timeout": settings.db_timeout_seconds, "command_timeout": 30},
    )


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


def str_enum(enum_class: type[enum.StrEnum], length: int | None) -> Enum:
    """A column type holding a StrEnum: rows read back as members, stored as their values in a VARCHAR.

    Not a native enum and no CHECK constraint: the column stays the VARCHAR(``length``)
    the migrations created, so adding a member needs no schema change.
    """
    return Enum(enum_class, native_enum=False, create_constraint=False, length=length, validate_strings=True,
                values_callable=lambda members: [member.value for member in members])
