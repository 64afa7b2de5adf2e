"""A live control plane on real Postgres and Redis, shared by the API tests.

Each test starts from empty tables (tokens and the snapshot counter survive, so
the bootstrap admin token stays valid and snapshot revisions only grow).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from control_plane import migrate
from control_plane.app import create_app
from control_plane.settings import Settings
from tests.services import LiveServer

ADMIN_TOKEN = "gr_test-admin-token-0123456789abcdefghijklmnop"
SECRET_KEY = "test-secret-key-0123456789abcdef"
ROLES = ("admin", "publisher", "release-manager", "viewer", "router")
TABLES_RESET_PER_TEST = ("rollout_verdicts", "rollouts", "audit_events", "deployments", "traffic_revisions", "engines", "versions", "models", "pools")


def reset_database(url: str) -> None:
    async def truncate() -> None:
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            # The live server may still be publishing the previous test's last change; its reads can
            # deadlock with TRUNCATE's exclusive locks, and Postgres then aborts one side: try again.
            for attempt in range(10):
                try:
                    async with engine.begin() as connection:
                        if url.startswith("postgresql"):
                            await connection.execute(
                                text(f"TRUNCATE {', '.join(TABLES_RESET_PER_TEST)} RESTART IDENTITY CASCADE"))
                        else:
                            for table in TABLES_RESET_PER_TEST:
                                await connection.execute(text(f"DELETE FROM {table}"))
                    return
                except DBAPIError as exc:
                    if getattr(exc.orig, "sqlstate", None) != "40P01" or attempt == 9:
                        raise
                    await asyncio.sleep(0.1)
        finally:
            await engine.dispose()

    asyncio.run(truncate())


class Api:
    """An HTTP client for the live server that can act as each role."""

    def __init__(self, base_url: str, tokens: dict[str, str]) -> None:
        self.base_url = base_url
        self.tokens = tokens
        self._clients: dict[str, httpx.Client] = {}

    def as_(self, role: str | None) -> httpx.Client:
        key = role or "anonymous"
        if key not in self._clients:
            headers = {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}
            self._clients[key] = httpx.Client(base_url=self.base_url + "/api/v1", headers=headers, timeout=30)
        return self._clients[key]

    def __getattr__(self, method: str) -> Any:
        # api.get(...) etc. act as admin
        return getattr(self.as_("admin"), method)

    def close(self) -> None:
        for client in self._clients.values():
            client.close()

    # --- seeding through the real API ------------------------------------------------------
    def pool(self, name: str = "a100", gpu_arch: str = "sm_80", trt_version: str = "10.3", kind: str = "external",
             **extra: Any) -> dict[str, Any]:
        if kind == "external":
            # The private network the tests' fake backends live on, and loopback for the real ones.
            extra.setdefault("allowed_endpoints", ["10.0.0.0/8", "127.0.0.1"])
        body = {"gpu_arch": gpu_arch, "kind": kind, "trt_version": trt_version, **extra}
        response = self.as_("admin").put(f"/pools/{name}", json=body)
        assert response.status_code in (200, 201), response.text
        return response.json()

    def model(self, name: str = "resnet50", **extra: Any) -> dict[str, Any]:
        response = self.as_("publisher").post("/models", json={"name": name, **extra})
        assert response.status_code == 201, response.text
        return response.json()

    def version(self, model: str, version: str, archs: tuple[str, ...] = ("sm_80",), trt_version: str = "10.3",
                precision: str = "fp16", **extra: Any) -> dict[str, Any]:
        engines = [{"gpu_arch": a, "uri": f"s3://engines/{model}/{version}/{a}.plan", "sha256": "a" * 64,
                    "size_bytes": 1 << 20} for a in archs]
        response = self.as_("publisher").post(f"/models/{model}/versions", json={
            "version": version, "precision": precision, "trt_version": trt_version, "engines": engines, **extra})
        assert response.status_code == 201, response.text
        return response.json()

    def traffic(self, model: str, splits: dict[str, float], default: str | None = None,
                rules: list[dict[str, Any]] | None = None, reason: str = "test") -> httpx.Response:
        etag = self.as_("release-manager").get(f"/models/{model}/traffic").headers["etag"]
        body = {"default_version": default or next(iter(splits)), "reason": reason, "rules": rules or [],
                "splits": [{"version": v, "weight": w} for v, w in splits.items()]}
        return self.as_("release-manager").put(f"/models/{model}/traffic", json=body, headers={"If-Match": etag})

    def canary(self, model: str = "resnet50", stable: str = "3", candidate: str = "4",
               weight: float = 5.0) -> dict[str, Any]:
        """A pool, a model with two runnable versions, a stable/candidate split."""
        self.pool()
        self.model(model)
        self.version(model, stable, precision="fp32")
        self.version(model, candidate)
        response = self.traffic(model, {stable: 100 - weight, candidate: weight}, default=stable)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture(scope="session")
def cp_settings(postgres_url: str, redis_url: str) -> Settings:
    migrate.upgrade(postgres_url)
    # No rollout controller: this server lives for the whole session, and the rollout tests start their own
    # controllers on the same database; one left running here would drive their rollouts too.
    return Settings(database_url=postgres_url, redis_url=redis_url, secret_key=SECRET_KEY,
                    bootstrap_admin_token=ADMIN_TOKEN, rollout_controller=False)


@pytest.fixture(scope="session")
def cp_server(cp_settings: Settings) -> Iterator[LiveServer]:
    server = LiveServer(create_app(cp_settings)).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def role_tokens(cp_server: LiveServer) -> dict[str, str]:
    tokens = {"admin": ADMIN_TOKEN}
    with httpx.Client(base_url=cp_server.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
        for role in ROLES[1:]:
            response = client.post("/api/v1/tokens", json={"name": f"test-{role}", "role": role})
            assert response.status_code == 201, response.text
            tokens[role] = response.json()["token"]
    return tokens


@pytest.fixture
def api(cp_server: LiveServer, cp_settings: Settings, role_tokens: dict[str, str]) -> Iterator[Api]:
    reset_database(cp_settings.database_url)
    client = Api(cp_server.url, role_tokens)
    yield client
    client.close()
