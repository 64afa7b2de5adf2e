"""Migrations upgrade, downgrade and agree with the models, on Postgres and SQLite."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from control_plane import migrate


def _tables(url: str) -> set[str]:
    async def read() -> set[str]:
        engine = create_async_engine(url, poolclass=NullPool)
        async with engine.connect() as connection:
            names = await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
        await engine.dispose()
        return names

    return asyncio.run(read())


def _create_database(postgres_url: str, name: str) -> str:
    async def create() -> None:
        engine = create_async_engine(postgres_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        async with engine.connect() as connection:
            await connection.execute(text(f"DROP DATABASE IF EXISTS {name}"))
            await connection.execute(text(f"CREATE DATABASE {name}"))
        await engine.dispose()

    asyncio.run(create())
    return postgres_url.rsplit("/", 1)[0] + f"/{name}"


def _round_trip(url: str) -> None:
    migrate.upgrade(url)
    migrate.check(url)  # models and migrations agree
    assert {"models", "versions", "engines", "pools", "traffic_revisions", "deployments", "audit_events",
            "tokens", "snapshot_state"} <= _tables(url)
    migrate.downgrade(url, "base")
    assert _tables(url) <= {"alembic_version"}
    migrate.upgrade(url)
    migrate.check(url)


def test_postgres_upgrade_downgrade_upgrade_and_check(postgres_url: str) -> None:
    _round_trip(_create_database(postgres_url, "grayroute_migrations"))


def test_sqlite_upgrade_downgrade_upgrade_and_check(tmp_path: Path) -> None:
    _round_trip(f"sqlite+aiosqlite:///{tmp_path / 'grayroute.db'}")
