"""Rollout tests: the live control plane of the API tests (real Postgres and Redis), with its own controller off.

The end-to-end tests start the real ``RolloutController`` themselves (so they can
restart it, or run two), beside a real local reconciler, engine servers and a router.
"""

from __future__ import annotations

import pytest

from control_plane import migrate
from control_plane.settings import Settings
from tests.control_plane.conftest import ADMIN_TOKEN, SECRET_KEY, api, cp_server, role_tokens  # noqa: F401


@pytest.fixture(scope="session")
def cp_settings(postgres_url: str, redis_url: str) -> Settings:
    migrate.upgrade(postgres_url)
    return Settings(database_url=postgres_url, redis_url=redis_url, secret_key=SECRET_KEY,
                    bootstrap_admin_token=ADMIN_TOKEN, rollout_controller=False)
