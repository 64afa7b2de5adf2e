"""Alembic, driven from code: ``grayroute db upgrade|downgrade`` and the tests."""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

import migrations

MODEL_MODULES = (
    "control_plane.changes",
    "control_plane.registry.models",
    "control_plane.traffic.models",
    "control_plane.audit.models",
    "control_plane.auth.models",
    "control_plane.deployments.models",
    "control_plane.rollouts.models",
)


def import_all_models() -> None:
    """Register every table on ``Base.metadata`` (Alembic compares against it)."""
    for module in MODEL_MODULES:
        importlib.import_module(module)


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def _in_thread(fn, *args) -> None:  # type: ignore[no-untyped-def]
    # env.py calls asyncio.run(); that needs a thread without a running loop.
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        fn(*args)
        return
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(fn, *args).result()


def upgrade(database_url: str, revision: str = "head") -> None:
    _in_thread(command.upgrade, alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "-1") -> None:
    _in_thread(command.downgrade, alembic_config(database_url), revision)


def check(database_url: str) -> None:
    """Raise unless the models and the migrations agree (``alembic check``)."""
    _in_thread(command.check, alembic_config(database_url))


def head() -> str | None:
    """The revision the code expects the schema to be at."""
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


async def current(engine: AsyncEngine) -> str | None:
    """The revision the database's schema is at (None: never migrated)."""
    async with engine.connect() as connection:
        return await connection.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())
