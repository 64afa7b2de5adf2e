"""The routing snapshot: contents, ETag/304, long-poll, Redis store and publish."""

from __future__ import annotations

import threading
import time

import redis

from router.snapshot import SNAPSHOT_CHANNEL, SNAPSHOT_KEY
from router.snapshot import parse_snapshot
from tests.control_plane.conftest import Api


def test_snapshot_carries_policy_and_only_ready_endpoints(api: Api) -> None:
    api.canary(weight=5)
    api.pool("h100", gpu_arch="sm_90")
    api.as_("publisher").put("/models/resnet50/versions/3/endpoints",
                             json={"pool": "a100", "urls": ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]})
    response = api.as_("router").get("/snapshot")
    assert response.status_code == 200
    snapshot = parse_snapshot(response.content)  # the router's own validation accepts it
    model = snapshot.models["resnet50"]
    assert model.allocation == [(0, 9500, "3"), (9500, 10000, "4")]
    assert model.default_version == "3"
    assert [e.url for e in model.versions["3"].endpoints] == ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]
    assert model.versions["3"].endpoints[0].gpu_arch == "sm_80"
    assert model.versions["4"].endpoints == []  # not ready anywhere: not routable
    assert response.headers["etag"] == f'"{snapshot.revision}"'


def test_etag_and_304(api: Api) -> None:
    api.canary()
    first = api.as_("router").get("/snapshot")
    etag = first.headers["etag"]
    again = api.as_("router").get("/snapshot", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    api.traffic("resnet50", {"3": 90, "4": 10}, default="3")
    changed = api.as_("router").get("/snapshot", headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert int(changed.headers["etag"].strip('"')) > int(etag.strip('"'))


def test_revision_only_grows_and_non_routing_changes_do_not_bump(api: Api) -> None:
    api.canary()
    revision = parse_snapshot(api.as_("router").get("/snapshot").content).revision
    api.as_("publisher").patch("/models/resnet50", json={"description": "no routing effect"})
    api.as_("publisher").patch("/models/resnet50/versions/3", json={"notes": "no routing effect"})
    assert parse_snapshot(api.as_("router").get("/snapshot").content).revision == revision
    api.traffic("resnet50", {"3": 80, "4": 20}, default="3")
    assert parse_snapshot(api.as_("router").get("/snapshot").content).revision == revision + 1


def test_long_poll_returns_as_soon_as_a_change_commits(api: Api) -> None:
    api.canary()
    etag = api.as_("router").get("/snapshot").headers["etag"]
    result: dict[str, float] = {}

    def poll() -> None:
        started = time.monotonic()
        response = api.as_("router").get("/snapshot", params={"wait": 20}, headers={"If-None-Match": etag})
        result["status"] = response.status_code
        result["seconds"] = time.monotonic() - started

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.5)
    changed_at = time.monotonic()
    api.traffic("resnet50", {"3": 90, "4": 10}, default="3")
    poller.join(timeout=25)
    assert result["status"] == 200
    assert result["seconds"] < 5, result
    assert time.monotonic() - changed_at < 5
    # With nothing new, a short wait ends in 304.
    latest = api.as_("router").get("/snapshot").headers["etag"]
    assert api.as_("router").get("/snapshot", params={"wait": 0.3}, headers={"If-None-Match": latest}).status_code == 304


def test_every_change_is_stored_in_redis_and_published(api: Api, redis_url: str) -> None:
    api.canary()
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    pubsub.subscribe(SNAPSHOT_CHANNEL)
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"
    response = api.traffic("resnet50", {"3": 90, "4": 10}, default="3")
    assert response.status_code == 200
    expected = int(api.as_("router").get("/snapshot").headers["etag"].strip('"'))
    published: list[int] = []
    deadline = time.monotonic() + 5
    while expected not in published and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=1)
        if message is not None and message["type"] == "message":
            published.append(int(message["data"]))
    assert expected in published, published
    revision = expected
    stored = parse_snapshot(client.get(SNAPSHOT_KEY))
    assert stored.revision == revision
    assert stored.models["resnet50"].splits[1].weight == 10
    pubsub.close()
    client.close()


def test_incremental_snapshot_equals_a_full_rebuild(api: Api, cp_settings) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    import orjson
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    from control_plane.db import session_factory
    from control_plane.traffic import snapshot as snapshot_builder

    api.canary("resnet50")
    api.model("bert")
    api.version("bert", "1")
    api.version("bert", "2")
    api.traffic("bert", {"1": 50, "2": 50}, default="1")
    api.as_("router").get("/snapshot")  # cache everything
    # Changes to one model at a time: the server rebuilds only that model's part.
    api.traffic("resnet50", {"3": 80, "4": 20}, default="3")
    api.as_("publisher").put("/models/bert/versions/2/endpoints", json={"pool": "a100", "urls": ["http://10.1.0.1:1"]})
    api.as_("release-manager").patch("/models/bert", json={"key_header": "x-session"})
    served = orjson.loads(api.as_("router").get("/snapshot").content)

    async def fresh() -> dict:
        engine = create_async_engine(cp_settings.database_url, poolclass=NullPool)
        async with session_factory(engine)() as session:
            snapshot = await snapshot_builder.build(session)
        await engine.dispose()
        return snapshot

    rebuilt = asyncio.run(fresh())
    assert served["revision"] == rebuilt["revision"]
    assert served["models"] == orjson.loads(orjson.dumps(rebuilt["models"]))
    assert served["models"]["bert"]["key_header"] == "x-session"
    assert served["models"]["bert"]["versions"]["2"]["endpoints"][0]["url"] == "http://10.1.0.1:1"
