"""Rollout tests reuse the live control plane of the API tests (real Postgres and Redis)."""

from tests.control_plane.conftest import api, cp_server, cp_settings, role_tokens  # noqa: F401
