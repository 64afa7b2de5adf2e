"""Migrations upgrade, downgrade and agree with the models, on Postgres and SQLite."""

from __future__ import annotations

import asyncio
import json
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


def test_external_pools_start_allowing_exactly_the_endpoints_registered_on_them(tmp_path: Path) -> None:
    """0002: nothing that routes today stops, nothing new is admitted."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'grayroute.db'}"
    migrate.upgrade(url, "0001")
    now = "2026-11-28 00:00:00+00:00"

    async def seed_then_read() -> dict[str, str]:
        engine = create_async_engine(url, poolclass=NullPool)
        async with engine.begin() as connection:
            for pool_id, name, kind in ((1, "partner", "external"), (2, "a100", "kubernetes")):
                await connection.execute(text(
                    "INSERT INTO pools (id, name, gpu_arch, kind, node_selector, trt_version, created_at, updated_at) "
                    f"VALUES ({pool_id}, '{name}', 'sm_80', '{kind}', '{{}}', '10.3', '{now}', '{now}')"))
            await connection.execute(text(
                "INSERT INTO models (id, name, description, key_header, salt, anonymous, replicas, created_by, "
                "created_at, updated_at) "
                f"VALUES (1, 'm', '', 'x-user-id', 'm', 'weighted', '{{}}', 't', '{now}', '{now}')"))
            await connection.execute(text(
                "INSERT INTO versions (id, model_id, version, precision, trt_version, source_uri, status, notes, warm, "
                f"registered_by, created_at, updated_at) VALUES (1, 1, '1', 'fp16', '10.3', '', 'active', '', 0, 't', "
                f"'{now}', '{now}')"))
            urls = {1: '[{"url": "http://10.0.0.1:8000"}, {"url": "https://triton.partner.example"}, '
                       '{"url": "http://[fd00::1]:9000/v2"}]',
                    2: '[{"url": "http://10.9.9.9:8000"}]'}
            for pool_id, endpoints in urls.items():
                await connection.execute(text(
                    "INSERT INTO deployments (version_id, pool_id, desired_replicas, ready_replicas, endpoints, phase, "
                    "message, updated_at) VALUES (1, :pool, 1, 1, :endpoints, 'Ready', '', :now)"),
                    {"pool": pool_id, "endpoints": endpoints, "now": now})
        await engine.dispose()
        migrate.upgrade(url)
        engine = create_async_engine(url, poolclass=NullPool)
        async with engine.connect() as connection:
            rows = (await connection.execute(text("SELECT name, allowed_endpoints FROM pools"))).all()
        await engine.dispose()
        return {name: allowed for name, allowed in rows}

    allowed = asyncio.run(seed_then_read())
    assert json.loads(allowed["partner"]) == ["10.0.0.1:8000", "[fd00::1]:9000", "triton.partner.example:443"]
    assert json.loads(allowed["a100"]) == []  # the reconciler's pods are not registered by people
    migrate.downgrade(url, "0001")
