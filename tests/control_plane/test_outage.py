"""Postgres restarted under a running server: 503s during the outage, recovery without a restart."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from control_plane import migrate
from control_plane.app import create_app
from control_plane.settings import Settings
from tests.control_plane.conftest import ADMIN_TOKEN, SECRET_KEY
from tests.services import LiveServer, PostgresServer


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    # A private cluster: restarting the shared one would disturb other tests.
    server = PostgresServer.start()
    yield server
    server.stop()


def test_requests_during_outage_get_503_and_server_recovers(own_postgres: PostgresServer) -> None:
    migrate.upgrade(own_postgres.url)
    settings = Settings(database_url=own_postgres.url, secret_key=SECRET_KEY, bootstrap_admin_token=ADMIN_TOKEN,
                        db_timeout_seconds=2)
    server = LiveServer(create_app(settings)).start()
    client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=20)
    try:
        assert client.post("/api/v1/models", json={"name": "before"}).status_code == 201

        statuses: list[int] = []
        bodies: list[dict] = []
        down = threading.Event()

        def outage() -> None:
            own_postgres.pause()
            down.set()
            time.sleep(3)
            own_postgres.resume()

        worker = threading.Thread(target=outage)
        worker.start()
        down.wait(30)
        while worker.is_alive():
            response = client.get("/api/v1/models")
            statuses.append(response.status_code)
            if response.status_code != 200:
                bodies.append(response.json())
            time.sleep(0.2)
        worker.join()

        assert 503 in statuses, statuses
        assert set(statuses) <= {200, 503}, statuses  # never a 500
        assert bodies[0]["error"]["code"] == "unavailable"
        assert client.get("/readyz").status_code in (200, 503)

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            response = client.get("/api/v1/models")
            if response.status_code == 200:
                break
            time.sleep(0.2)
        assert response.status_code == 200, response.text
        assert client.post("/api/v1/models", json={"name": "after"}).status_code == 201
        assert [m["name"] for m in client.get("/api/v1/models").json()] == ["after", "before"]
        assert client.get("/readyz").status_code == 200
    finally:
        client.close()
        server.stop()
