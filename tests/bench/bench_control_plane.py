"""Control-plane benchmark: snapshot build and traffic PUT latency on real Postgres.

    python tests/bench/bench_control_plane.py [--models 500] [--puts 300]

Starts a private Postgres and Redis on loopback, seeds N models x 3 versions
(engines, ready endpoints, a 90/5/5 policy), then prints p50/p99 for: building
the whole snapshot in-process, GET /api/v1/snapshot when it must be rebuilt,
GET when cached, PUT /api/v1/models/{m}/traffic, and the time from a PUT
returning to its snapshot being stored in Redis and published to routers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import httpx
import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from control_plane import migrate  # noqa: E402
from control_plane.app import create_app  # noqa: E402
from control_plane.db import session_factory  # noqa: E402
from control_plane.settings import Settings  # noqa: E402
from control_plane.traffic import snapshot as snapshot_builder  # noqa: E402
from tests.services import LiveServer, PostgresServer, RedisServer  # noqa: E402

ADMIN = "gr_bench-admin-token-0123456789abcdefghijklmnop"


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {p50 * 1000:7.2f} ms   p99 {p99 * 1000:7.2f} ms   (n={len(ordered)})"


async def seed(url: str, models: int) -> None:
    """Bulk rows straight into Postgres: seeding through the API would take minutes and measure nothing."""
    from control_plane.deployments.models import Deployment
    from control_plane.registry.models import Engine, Model, Pool, Version
    from control_plane.traffic.models import TrafficRevision
    from router.routing import allocate, bucket_counts

    started = time.monotonic()
    engine = create_async_engine(url)
    async with session_factory(engine)() as session:
        pool = Pool(name="a100", gpu_arch="sm_80", kind="external", trt_version="10.3")
        session.add(pool)
        await session.flush()
        splits = [{"version": "1", "weight": 90.0}, {"version": "2", "weight": 5.0}, {"version": "3", "weight": 5.0}]
        allocation = [list(r) for r in allocate(None, bucket_counts((s["version"], s["weight"]) for s in splits))]
        for i in range(models):
            name = f"model-{i:04d}"
            model = Model(name=name, salt=name, created_by="bench", versions=[
                Version(version=v, precision="fp16", trt_version="10.3", registered_by="bench", status="active",
                        engines=[Engine(gpu_arch="sm_80", uri=f"s3://e/{name}/{v}.plan", sha256="a" * 64,
                                        trt_version="10.3")])
                for v in ("1", "2", "3")])
            session.add(model)
            await session.flush()
            session.add(TrafficRevision(model_id=model.id, revision=1, default_version="1", splits=splits, rules=[],
                                        allocation=allocation, salt=name, created_by="bench"))
            for version in model.versions:
                url_ = f"http://10.0.{i // 250}.{i % 250}:800{version.version}"
                session.add(Deployment(version_id=version.id, pool_id=pool.id, desired_replicas=1, ready_replicas=1,
                                       endpoints=[{"url": url_}], phase="Ready"))
        await session.commit()
    await engine.dispose()
    await bump(url)
    print(f"seeded {models} models x 3 versions (with endpoints and a 90/5/5 policy) in "
          f"{time.monotonic() - started:.1f} s")


async def build_times(url: str, rounds: int) -> list[float]:
    import gc

    gc.freeze()  # as the app does after start
    engine = create_async_engine(url)
    sessions = session_factory(engine)
    samples = []
    for _ in range(rounds):
        async with sessions() as session:
            started = time.perf_counter()
            snapshot = await snapshot_builder.build(session)
            orjson.dumps(snapshot)  # the publisher encodes per model; same bytes in all
            samples.append(time.perf_counter() - started)
    await engine.dispose()
    return samples


async def bump(url: str) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as connection:
        await connection.execute(text("UPDATE snapshot_state SET revision = revision + 1"))
    await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=500)
    parser.add_argument("--puts", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()

    postgres, redis = PostgresServer.start(), RedisServer.start()
    try:
        migrate.upgrade(postgres.url)
        settings = Settings(database_url=postgres.url, redis_url=redis.url, secret_key="bench-secret-key-0123456789",
                            bootstrap_admin_token=ADMIN)
        asyncio.run(seed(postgres.url, args.models))
        server = LiveServer(create_app(settings)).start()
        client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60)

        build = asyncio.run(build_times(postgres.url, args.rounds))
        uncached, cached = [], []
        for _ in range(args.rounds):
            asyncio.run(bump(postgres.url))
            started = time.perf_counter()
            response = client.get("/api/v1/snapshot")
            uncached.append(time.perf_counter() - started)
            assert response.status_code == 200
            started = time.perf_counter()
            client.get("/api/v1/snapshot")
            cached.append(time.perf_counter() - started)
        size = len(response.content)

        import redis as redis_client

        subscriber = redis_client.Redis.from_url(redis.url).pubsub()
        subscriber.subscribe("grayroute:snapshot")
        subscriber.get_message(timeout=2)
        puts, published = [], []
        for n in range(args.puts):
            name = f"model-{n % args.models:04d}"
            etag = client.get(f"/api/v1/models/{name}/traffic").headers["etag"]
            canary = 5 + (n % 10)
            body = {"default_version": "1", "reason": "bench", "splits": [
                {"version": "1", "weight": 95 - canary}, {"version": "2", "weight": canary},
                {"version": "3", "weight": 5}]}
            started = time.perf_counter()
            response = client.put(f"/api/v1/models/{name}/traffic", json=body, headers={"If-Match": etag})
            returned = time.perf_counter()
            puts.append(returned - started)
            assert response.status_code == 200, response.text
            # How long after the PUT returns the new snapshot is in Redis and announced to routers.
            while (message := subscriber.get_message(timeout=5)) is not None and message["type"] != "message":
                pass
            assert message is not None, "no snapshot published"
            published.append(time.perf_counter() - returned)

        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
              f"Postgres on loopback, {args.models} models x 3 versions, snapshot {size / 1024:.0f} KiB")
        print(f"snapshot build (in-process)       {percentiles(build)}")
        print(f"GET /api/v1/snapshot (rebuilt)    {percentiles(uncached)}")
        print(f"GET /api/v1/snapshot (cached)     {percentiles(cached)}")
        print(f"PUT /api/v1/models/m/traffic      {percentiles(puts)}")
        print(f"PUT returned -> published (Redis) {percentiles(published)}")
        client.close()
        server.stop()
    finally:
        postgres.stop()
        redis.stop()


if __name__ == "__main__":
    main()
