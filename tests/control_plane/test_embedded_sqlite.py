"""The embedded default: SQLite, in-process notification, no other service."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane.app import create_app
from control_plane.settings import Settings
from router.snapshot import parse_snapshot
from tests.control_plane.conftest import ADMIN_TOKEN, Api
from tests.services import LiveServer


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    database = tmp_path_factory.mktemp("embedded") / "grayroute.db"
    settings = Settings(database_url=f"sqlite+aiosqlite:///{database}", bootstrap_admin_token=ADMIN_TOKEN)
    assert settings.embedded
    server = LiveServer(create_app(settings)).start()  # migrates the SQLite file itself
    tokens = {"admin": ADMIN_TOKEN}
    api = Api(server.url, tokens)
    for role in ("publisher", "release-manager", "viewer", "router"):
        tokens[role] = api.post("/tokens", json={"name": f"sqlite-{role}", "role": role}).json()["token"]
    yield api
    api.close()
    server.stop()


def test_full_flow_on_sqlite(embedded: Api) -> None:
    policy = embedded.canary(weight=5)
    assert policy["allocation"] == [[0, 9500, "3"], [9500, 10000, "4"]]
    response = embedded.traffic("resnet50", {"3": 90, "4": 10}, default="3")
    assert response.status_code == 200
    assert response.json()["allocation"] == [[0, 9000, "3"], [9000, 10000, "4"]]
    snapshot = parse_snapshot(embedded.as_("router").get("/snapshot").content)
    assert snapshot.models["resnet50"].traffic_revision == 2
    assert embedded.as_("router").get(
        "/snapshot", headers={"If-None-Match": f'"{snapshot.revision}"'}).status_code == 304
    bad = embedded.traffic("resnet50", {"3": 90, "4": 10.001}, default="3")
    assert bad.status_code == 422
    assert [e["action"] for e in embedded.get("/audit").json()][:2] == ["traffic.update", "traffic.update"]


def test_concurrent_writers_on_sqlite_exactly_one_wins(embedded: Api) -> None:
    embedded.pool()
    embedded.model("bert")
    embedded.version("bert", "1")
    embedded.version("bert", "2")
    assert embedded.traffic("bert", {"1": 100, "2": 0}, default="1").status_code == 200
    statuses: list[int] = []
    barrier = threading.Barrier(6)

    def writer(weight: int) -> None:
        barrier.wait()
        response = embedded.as_("release-manager").put(
            "/models/bert/traffic", headers={"If-Match": '"1"'},
            json={"default_version": "1", "splits": [{"version": "1", "weight": 100 - weight},
                                                     {"version": "2", "weight": weight}]})
        statuses.append(response.status_code)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(1, 7)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] + [412] * 5, statuses
    assert [r["revision"] for r in embedded.get("/models/bert/traffic/revisions").json()] == [2, 1]


def test_demo_secret_is_refused_outside_embedded_mode(tmp_path: Path) -> None:
    from control_plane.settings import SettingsError

    with pytest.raises((SettingsError, ValueError), match="GRAYROUTE_SECRET_KEY must be set"):
        Settings(database_url="postgresql+asyncpg://u@localhost/db")
    with pytest.raises((SettingsError, ValueError), match="GRAYROUTE_SECRET_KEY must be set"):
        Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/x.db", redis_url="redis://localhost")
