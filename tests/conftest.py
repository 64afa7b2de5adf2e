"""Session-wide real services. Domain fixtures live in each test package's conftest."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import PostgresServer, RedisServer

# The routing vectors (docs/routing.md) are data of this repository: a clone on its own passes.
VECTORS = Path(__file__).resolve().parent / "data" / "routing-vectors.json"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer | None]:
    if os.environ.get("GRAYROUTE_TEST_POSTGRES_URL"):
        yield None
        return
    server = PostgresServer.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer | None) -> str:
    return os.environ.get("GRAYROUTE_TEST_POSTGRES_URL") or postgres_server.url  # type: ignore[union-attr]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer | None]:
    if os.environ.get("GRAYROUTE_TEST_REDIS_URL"):
        yield None
        return
    server = RedisServer.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer | None) -> str:
    return os.environ.get("GRAYROUTE_TEST_REDIS_URL") or redis_server.url  # type: ignore[union-attr]


@pytest.fixture(scope="session")
def routing_vectors() -> dict:
    import json

    return json.loads(VECTORS.read_text())
