"""The routing spec through the router: vectors, split accuracy, minimal movement, live."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from router.routing import (
    ModelRouting,
    Route,
    Rule,
    allocate,
    bucket_counts,
    bucket_of,
    decide,
)
from router.snapshot import parse_snapshot
from tests.router.conftest import (
    RouterProcess,
    infer,
    model_spec,
    router_env,
    snapshot,
    start_backend,
)


def _routing(allocation: list[tuple[int, int, str]], salt: str = "resnet50", rules: tuple[Rule, ...] = (),
             default: str | None = None) -> ModelRouting:
    return ModelRouting.build(name="m", key_header="x-user-id", salt=salt, anonymous="weighted",
                              default_version=default, rules=rules, allocation=allocation)


def test_bucket_vectors(routing_vectors: dict[str, Any]) -> None:
    cases = routing_vectors["buckets"]
    assert cases
    by_salt: dict[str, ModelRouting] = {}
    for case in cases:
        assert bucket_of(case["salt"], case["key"]) == case["bucket"], case
        # through decide too: the bucket it reports and the owner it picks
        model = by_salt.setdefault(case["salt"], _routing([(0, 5000, "a"), (5000, 10000, "b")], salt=case["salt"]))
        decision = decide(model, {"x-user-id": case["key"]}, {"a", "b"})
        assert decision.bucket == case["bucket"], case
        assert decision.version == ("a" if case["bucket"] < 5000 else "b")
        assert decision.route is Route.SPLIT


def test_allocation_vectors(routing_vectors: dict[str, Any]) -> None:
    for case in routing_vectors["allocations"]:
        previous = None if case["previous"] is None else [tuple(r) for r in case["previous"]]
        counts = bucket_counts((s["version"], s["weight"]) for s in case["splits"])
        assert [list(r) for r in allocate(previous, counts)] == case["allocation"], case


def test_split_within_half_a_point_over_100k_keys() -> None:
    splits = [("3", 90.0), ("4", 7.5), ("5", 2.5)]
    model = _routing(allocate(None, bucket_counts(splits)))
    ready = {"3", "4", "5"}
    counts = Counter(decide(model, {"x-user-id": f"user-{i}"}, ready).version for i in range(100_000))
    for version, weight in splits:
        assert abs(counts[version] / 1000 - weight) <= 0.5, (version, counts)


def test_raising_canary_moves_exactly_the_difference_into_the_canary() -> None:
    before_alloc = allocate(None, bucket_counts([("3", 80.0), ("4", 5.0), ("5", 15.0)]))
    after_alloc = allocate(before_alloc, bucket_counts([("3", 75.0), ("4", 10.0), ("5", 15.0)]))
    before, after = _routing(before_alloc), _routing(after_alloc)
    ready = {"3", "4", "5"}
    moved = Counter()
    users = 100_000
    for i in range(users):
        headers = {"x-user-id": f"u{i}"}
        old, new = decide(before, headers, ready).version, decide(after, headers, ready).version
        if old != new:
            moved[(old, new)] += 1
    # exact at the bucket level: 500 buckets change owner, all 3 -> 4
    changed = [b for b in range(10_000) if before.owner(b) != after.owner(b)]
    assert len(changed) == 500
    assert all(before.owner(b) == "3" and after.owner(b) == "4" for b in changed)
    assert set(moved) == {("3", "4")}  # nobody leaves the canary, version 5 keeps its users
    assert abs(moved[("3", "4")] / users - 0.05) <= 0.005


def test_rules_then_split_then_fallback() -> None:
    rules = (Rule("qa", "4", "x-tenant", frozenset({"qa"})), Rule("beta", "5", None, frozenset({"vip"})))
    model = _routing([(0, 10000, "3")], rules=rules, default="3")
    assert decide(model, {"x-tenant": "qa", "x-user-id": "a"}, {"3", "4"}).route_header == "rule:qa"
    assert decide(model, {"x-user-id": "vip"}, {"3", "5"}).version == "5"
    # the rule's version has no backend: evaluation continues with the split
    assert decide(model, {"x-tenant": "qa", "x-user-id": "a"}, {"3"}).route is Route.SPLIT
    assert decide(model, {"x-user-id": "a"}, set()).route is Route.UNAVAILABLE


async def test_live_router_agrees_with_decide(backends: dict, routers: list[RouterProcess],
                                              tmp_path: Path) -> None:
    """Three versions, two rules: every response names the version the spec picks."""
    for version in ("3", "4", "5"):
        await start_backend(backends, version, version)
    first = model_spec({v: [backends[v].url] for v in ("3", "4", "5")}, [("3", 90.0), ("4", 5.0), ("5", 5.0)])
    spec = model_spec(
        {v: [backends[v].url] for v in ("3", "4", "5")}, [("3", 85.0), ("4", 10.0), ("5", 5.0)],
        previous=[tuple(r) for r in first["allocation"]], default_version="3",
        rules=[{"name": "qa", "match": {"header": "x-tenant", "in": ["qa"]}, "version": "5"},
               {"name": "beta", "match": {"key_in": ["beta-1"]}, "version": "4"}],
    )
    raw = snapshot(7, resnet50=spec)
    file = tmp_path / "snapshot.json"
    file.write_bytes(raw)
    router = RouterProcess("--snapshot-file", str(file), env=router_env()).start()
    routers.append(router)
    await router.wait_ready(7)
    expected = parse_snapshot(raw).models["resnet50"].routing("resnet50")
    ready = {"3", "4", "5"}
    rng = random.Random(7)
    seen = Counter()
    async with aiohttp.ClientSession() as session:
        for i in range(600):
            user = f"live-{rng.randrange(10**9)}"
            headers = {"x-tenant": "qa"} if i % 50 == 0 else {}
            if i % 97 == 0:
                user = "beta-1"
            want = decide(expected, {"x-user-id": user, **headers}, ready)
            status, version, route = await infer(session, router, user, headers=headers)
            assert (status, version, route) == (200, want.version, want.route_header), (user, headers)
            seen[route] += 1
        status, version, route = await infer(session, router, None)
        assert status == 200 and route == "anonymous"
    assert {"split", "rule:qa", "rule:beta"} <= set(seen)


async def test_every_bucket_vector_through_a_live_router(routing_vectors: dict[str, Any], backends: dict,
                                                         routers: list[RouterProcess], tmp_path: Path) -> None:
    """One model per case, owning only the expected bucket as version "hit": the router must compute
    exactly that bucket (UTF-8 keys and salts included)."""
    hit = await start_backend(backends, "hit", "hit")
    miss = await start_backend(backends, "miss", "miss")
    models = {}
    for i, case in enumerate(routing_vectors["buckets"]):
        if not case["key"]:
            continue
        b = case["bucket"]
        allocation = [r for r in ([0, b, "miss"], [b, b + 1, "hit"], [b + 1, 10_000, "miss"]) if r[0] < r[1]]
        models[f"case-{i}"] = {
            "salt": case["salt"], "splits": [{"version": "miss", "weight": 99.99}, {"version": "hit", "weight": 0.01}],
            "allocation": allocation,
            "versions": {"hit": {"endpoints": [{"url": hit.url, "pool": "p", "gpu_arch": "sm_80"}]},
                         "miss": {"endpoints": [{"url": miss.url, "pool": "p", "gpu_arch": "sm_80"}]}},
        }
    file = tmp_path / "snapshot.json"
    file.write_bytes(snapshot(3, **models))
    router = RouterProcess("--snapshot-file", str(file), env=router_env()).start()
    routers.append(router)
    await router.wait_ready(3)
    async with aiohttp.ClientSession() as session:
        for i, case in enumerate(routing_vectors["buckets"]):
            if not case["key"]:
                continue
            async with session.post(f"{router.url}/v2/models/case-{i}/infer", json={},
                                    headers={"x-user-id": case["key"]}) as response:  # sent as UTF-8
                assert response.status == 200
                assert response.headers["x-grayroute-version"] == "hit", case


async def test_allocation_vectors_through_a_live_router(routing_vectors: dict[str, Any], backends: dict,
                                                        routers: list[RouterProcess], tmp_path: Path) -> None:
    """Each allocation case as a model; a live sample of keys lands on the owners the vector names."""
    models, owners = {}, {}
    versions = sorted({s["version"] for case in routing_vectors["allocations"] for s in case["splits"]})
    for version in versions:
        await start_backend(backends, version, version)
    for i, case in enumerate(routing_vectors["allocations"]):
        name = f"alloc-{i}"
        models[name] = {
            "salt": name, "splits": case["splits"], "allocation": case["allocation"],
            "versions": {v: {"endpoints": [{"url": backends[v].url, "pool": "p", "gpu_arch": "sm_80"}]}
                         for v in versions},
        }
        owners[name] = case["allocation"]
    file = tmp_path / "snapshot.json"
    file.write_bytes(snapshot(4, **models))
    router = RouterProcess("--snapshot-file", str(file), env=router_env()).start()
    routers.append(router)
    await router.wait_ready(4)
    async with aiohttp.ClientSession() as session:
        for name, allocation in owners.items():
            counts: Counter = Counter()
            keys = [f"k{j}" for j in range(300)]
            results = await asyncio.gather(*(infer(session, router, key, model=name) for key in keys))
            for key, (status, version, _) in zip(keys, results):
                bucket = bucket_of(name, key)
                want = next(v for s, e, v in allocation if s <= bucket < e)
                assert (status, version) == (200, want), (name, key)
                counts[version] += 1


async def test_live_canary_raise_moves_only_into_the_canary(backends: dict, control_plane: Any,
                                                            routers: list[RouterProcess]) -> None:
    for version in ("3", "4", "5"):
        await start_backend(backends, version, version)
    endpoints = {v: [backends[v].url] for v in ("3", "4", "5")}
    before = model_spec(endpoints, [("3", 80), ("4", 5), ("5", 15)], default_version="3")
    after = model_spec(endpoints, [("3", 75), ("4", 10), ("5", 15)], default_version="3",
                       previous=[tuple(r) for r in before["allocation"]])
    control_plane.set(snapshot(1, resnet50=before))
    router = RouterProcess("--control-plane", control_plane.url, "--poll-interval", "0.2", env=router_env()).start()
    routers.append(router)
    await router.wait_ready(1)
    users = [f"person-{i}" for i in range(2000)]
    async with aiohttp.ClientSession() as session:
        old = [r[1] for r in await asyncio.gather(*(infer(session, router, u) for u in users))]
        control_plane.set(snapshot(2, resnet50=after))
        await router.wait_ready(2, timeout=5)
        new = [r[1] for r in await asyncio.gather(*(infer(session, router, u) for u in users))]
    moves = Counter((a, b) for a, b in zip(old, new) if a != b)
    assert set(moves) == {("3", "4")}, moves
    assert all(b == "5" for a, b in zip(old, new) if a == "5")
    assert all(b == "4" for a, b in zip(old, new) if a == "4")
    assert abs(moves[("3", "4")] / len(users) - 0.05) < 0.02
    share = Counter(new)
    for version, weight in (("3", 75), ("4", 10), ("5", 15)):
        assert abs(share[version] / len(users) * 100 - weight) < 3.0, share


def test_router_never_imports_the_control_plane() -> None:
    import subprocess
    import sys

    code = ("import sys, router.app, router.cli, router.server, router.config, router.reporter; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('control_plane', 'sqlalchemy', 'fastapi')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
