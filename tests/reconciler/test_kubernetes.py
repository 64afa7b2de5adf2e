"""The Kubernetes target and the loop, through the real `kubernetes` client, against the API-server double."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from kubernetes import client

from control_plane.reconciler import desired as D
from control_plane.reconciler.health import serve as serve_health
from control_plane.reconciler.loop import Backoff, Reconciler
from control_plane.deployments.models import Phase
from control_plane.reconciler.targets.kubernetes import KubernetesTarget
from control_plane.reconciler.targets.lease import LeaseElector
from control_plane.reconciler.targets.manifests import SPEC_HASH
from router.policy import Policy
from tests.reconciler.conftest import MemoryStore, pool, traffic, version
from tests.reconciler.fake_apiserver import FakeApiServer

NS = "grayroute"
A100 = pool(1, "a100", "sm_80")
H100 = pool(2, "h100", "sm_90", namespace="gpu-h100")


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def model(*versions: D.VersionSpec, tr: Policy, budget: dict[str, int] | None = None) -> D.ModelSpec:
    return D.ModelSpec(1, "resnet", versions, tr, budget or {})


def make_target(api_client_factory: Callable[[], client.ApiClient], **kwargs: object) -> KubernetesTarget:
    options: dict[str, object] = {"request_timeout": 2.0, "watch_endpoints": False}
    options.update(kwargs)
    return KubernetesTarget(api_client=api_client_factory(), namespace=NS, **options)  # type: ignore[arg-type]


def deployment_of(server: FakeApiServer, ns: str, label: str, pool_name: str) -> dict | None:
    name = D.object_name("resnet", label, pool_name)
    return server.get("deployments", ns, name)


async def test_version_added_scaled_drained_and_deleted(apiserver: FakeApiServer, api_client_factory) -> None:
    clock = Clock()
    v1, v2 = version(10, "v1", "sm_80", "sm_90"), version(11, "v2", "sm_80")
    store = MemoryStore(D.Inputs((model(v1, v2, tr=traffic("v1", ("v1", 100)), budget={"a100": 4}),), (A100, H100)))
    target = make_target(api_client_factory)
    r = Reconciler(store=store, target=target, drain_seconds=600, clock=clock)
    await target.start(r.wake)
    try:
        first = await r.reconcile_once()
        assert first.ok and first.report.writes == 4  # Deployment + Service on each pool
        dep = deployment_of(apiserver, NS, "v1", "a100")
        assert dep is not None and dep["spec"]["replicas"] == 4
        assert deployment_of(apiserver, "gpu-h100", "v1", "h100") is not None  # the pool's own namespace
        labels = dep["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "grayroute"
        assert (labels["grayroute.io/model"], labels["grayroute.io/version"], labels["grayroute.io/pool"],
                labels["grayroute.io/gpu-arch"]) == ("resnet", "v1", "a100", "sm_80")
        pod = dep["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "A100"}
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert pod["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/v2/models/resnet/ready"
        assert pod["initContainers"][0]["args"][:3] == ["engine", "fetch", "https://artifacts.example/sm_80.plan"]
        assert apiserver.counts["apply"] == 4

        await r.reconcile_once()  # observes what the controllers made ready
        row = store.rows[(10, 1)]
        assert row.phase is Phase.READY and row.ready_replicas == 4 and len(row.endpoints) == 4
        assert all(u.startswith("http://10.") and u.endswith(":8000") for u in row.endpoints)
        assert store.rows[(10, 2)].phase is Phase.READY
        assert store.publishes >= 1

        # Canary at 25%: v2 appears, v1 gives up a replica on the a100 budget.
        store.inputs = D.Inputs((model(v1, v2, tr=traffic("v1", ("v1", 75), ("v2", 25)), budget={"a100": 4}),),
                                (A100, H100))
        await r.reconcile_once()
        assert deployment_of(apiserver, NS, "v1", "a100")["spec"]["replicas"] == 3
        assert deployment_of(apiserver, NS, "v2", "a100")["spec"]["replicas"] == 1
        assert deployment_of(apiserver, "gpu-h100", "v2", "h100") is None  # no sm_90 engine

        # Canary pulled: v2 drains but stays up, so a rollback is instant.
        store.inputs = D.Inputs((model(v1, v2, tr=traffic("v1", ("v1", 100)), budget={"a100": 4}),), (A100, H100))
        await r.reconcile_once()
        assert store.rows[(11, 1)].phase is Phase.DRAINING
        assert deployment_of(apiserver, NS, "v2", "a100") is not None
        await r.reconcile_once()
        assert store.rows[(11, 1)].endpoints  # still serving explicit-version requests

        clock.now += timedelta(seconds=601)
        await r.reconcile_once()
        name = D.object_name("resnet", "v2", "a100")
        assert name not in apiserver.names("deployments", NS)
        assert name not in apiserver.names("services", NS)
        assert (11, 1) not in store.rows
        assert deployment_of(apiserver, NS, "v1", "a100")["spec"]["replicas"] == 4
    finally:
        await target.close()


async def test_resync_with_nothing_changed_issues_no_writes(apiserver: FakeApiServer, api_client_factory) -> None:
    versions = tuple(version(10 + i, f"v{i}", "sm_80", "sm_90") for i in range(3))
    tr = traffic("v0", ("v0", 50), ("v1", 30), ("v2", 20))
    store = MemoryStore(D.Inputs((model(*versions, tr=tr, budget={"a100": 5, "h100": 3}),), (A100, H100)))
    target = make_target(api_client_factory)
    r = Reconciler(store=store, target=target)
    await target.start(r.wake)
    try:
        await r.reconcile_once()
        await r.reconcile_once()
        apiserver.reset_counts()
        result = await r.reconcile_once()
        assert result.ok and result.report.writes == 0
        assert apiserver.writes() == 0
        assert set(apiserver.counts) == {"list"}
        assert apiserver.counts["list"] == 3 * 2  # deployments, services, slices in each of two namespaces
        assert not result.routing_changed
    finally:
        await target.close()


async def test_an_api_outage_keeps_the_last_known_endpoints(apiserver: FakeApiServer, api_client_factory) -> None:
    store = MemoryStore(D.Inputs((model(version(10, "v1", "sm_80"), tr=traffic("v1", ("v1", 100)),
                                        budget={"a100": 2}),), (A100,)))
    target = make_target(api_client_factory)
    r = Reconciler(store=store, target=target)
    try:
        await r.reconcile_once()
        await r.reconcile_once()
        before = store.rows[(10, 1)]
        assert before.phase is Phase.READY and len(before.endpoints) == 2
        publishes = store.publishes
        apiserver.fail(100, status=503)
        result = await r.reconcile_once()
        assert not result.ok
        # Routers keep sending traffic to backends that were ready; nothing is withdrawn blindly.
        assert store.rows[(10, 1)] == before and store.publishes == publishes
        apiserver.clear_faults()
        assert (await r.reconcile_once()).ok
    finally:
        await target.close()


async def test_manual_edit_is_reverted_but_status_changes_are_not_writes(apiserver: FakeApiServer,
                                                                          api_client_factory) -> None:
    store = MemoryStore(D.Inputs((model(version(10, "v1", "sm_80"), tr=traffic("v1", ("v1", 100))),), (A100,)))
    target = make_target(api_client_factory)
    r = Reconciler(store=store, target=target)
    try:
        await r.reconcile_once()
        name = D.object_name("resnet", "v1", "a100")
        dep = apiserver.get("deployments", NS, name)
        with apiserver._lock:  # someone scales it by hand and drops our hash
            dep["spec"]["replicas"] = 7
            dep["metadata"]["annotations"][SPEC_HASH] = "edited"
        apiserver.reset_counts()
        await r.reconcile_once()
        assert apiserver.counts["apply"] == 1
        assert apiserver.get("deployments", NS, name)["spec"]["replicas"] == 1
    finally:
        await target.close()


async def test_rejected_apply_is_written_to_status_and_not_retried(apiserver: FakeApiServer,
                                                                    api_client_factory) -> None:
    store = MemoryStore(D.Inputs((model(version(10, "v1", "sm_80"), tr=traffic("v1", ("v1", 100))),), (A100,)))
    target = make_target(api_client_factory)
    r = Reconciler(store=store, target=target)
    try:
        apiserver.fail(1, status=422, verbs={"apply"}, resources={"deployments"})
        result = await r.reconcile_once()
        assert result.ok  # nothing to back off for
        row = store.rows[(10, 1)]
        assert row.phase is Phase.FAILED and "422" in row.message
        applies = apiserver.counts["apply"]
        await r.reconcile_once()
        await r.reconcile_once()
        # The Service went through; the rejected Deployment is not re-sent unchanged.
        assert apiserver.counts["apply"] == applies
        assert store.rows[(10, 1)].phase is Phase.FAILED
        # A changed spec is tried again.
        store.inputs = D.Inputs((model(version(10, "v1", "sm_80"), tr=traffic("v1", ("v1", 100)),
                                       budget={"a100": 2}),), (A100,))
        await r.reconcile_once()
        await r.reconcile_once()
        assert store.rows[(10, 1)].phase is Phase.READY
    finally:
        await target.close()


async def test_engine_matching_no_pool_is_failed_status_without_api_writes(apiserver: FakeApiServer,
                                                                            api_client_factory) -> None:
    store = MemoryStore(D.Inputs((model(version(10, "v1", "sm_75"), tr=traffic("v1", ("v1", 100))),), (A100,)))
    target = make_target(api_client_factory)
    r = Reconciler(store=store, target=target)
    try:
        result = await r.reconcile_once()
        assert result.ok and apiserver.writes() == 0
        assert store.rows[(10, 1)].phase is Phase.FAILED and "sm_75" in store.rows[(10, 1)].message
    finally:
        await target.close()


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def test_server_errors_and_stalls_back_off_without_losing_the_loop(apiserver: FakeApiServer,
                                                                        api_client_factory) -> None:
    store = MemoryStore(D.Inputs((model(version(10, "v1", "sm_80"), tr=traffic("v1", ("v1", 100))),), (A100,)))
    target = make_target(api_client_factory, request_timeout=0.5)
    backoff = Backoff(base=0.05, cap=0.4)
    r = Reconciler(store=store, target=target, backoff=backoff, resync_seconds=0.2)
    apiserver.fail(6, status=500)
    stop = asyncio.Event()
    task = asyncio.create_task(r.run(stop))
    try:
        await _until(lambda: backoff.failures >= 2)
        started = time.monotonic()
        await _until(lambda: (10, 1) in store.rows and store.rows[(10, 1)].phase is Phase.READY)
        assert not task.done()
        assert backoff.failures == 0  # reset by the first clean pass

        # A stalled API server: requests time out, the loop backs off and carries on.
        store.inputs = D.Inputs((model(version(10, "v1", "sm_80"), tr=traffic("v1", ("v1", 100)),
                                       budget={"a100": 3}),), (A100,))
        apiserver.stall(12, seconds=1.5)  # outlasts urllib3's own retries of idempotent reads
        await _until(lambda: backoff.failures >= 1)
        await _until(lambda: store.rows[(10, 1)].ready_replicas == 3, timeout=20)
        assert not task.done()
        assert time.monotonic() - started < 20

        # A database outage is a failed pass like any other.
        store.fail_loads = 2
        await _until(lambda: backoff.failures >= 1)
        await _until(lambda: store.fail_loads == 0 and backoff.failures == 0)
        assert not task.done()
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await target.close()


async def test_endpoint_slice_watch_wakes_the_loop_when_pods_become_ready(api_client_factory) -> None:
    server = FakeApiServer(auto_ready=False).start()
    try:
        from pathlib import Path
        import tempfile

        kubeconfig = server.write_kubeconfig(Path(tempfile.mkdtemp()) / "kubeconfig")
        from control_plane.reconciler.targets.kubernetes import load_api_client

        target = KubernetesTarget(api_client=load_api_client(kubeconfig=str(kubeconfig)), namespace=NS,
                                  request_timeout=2.0, watch_endpoints=True)
        store = MemoryStore(D.Inputs((model(version(10, "v1", "sm_80"), tr=traffic("v1", ("v1", 100)),
                                            budget={"a100": 2}),), (A100,)))
        r = Reconciler(store=store, target=target, resync_seconds=60, debounce_seconds=0.05)
        stop = asyncio.Event()
        task = asyncio.create_task(r.run(stop))
        try:
            await _until(lambda: (10, 1) in store.rows and store.rows[(10, 1)].phase is Phase.PROGRESSING)
            assert store.rows[(10, 1)].endpoints == ()
            name = D.object_name("resnet", "v1", "a100")
            server.set_ready(NS, name, 1)
            # Far sooner than the 60 s resync: the slice watch woke the loop.
            await _until(lambda: store.rows[(10, 1)].ready_replicas == 1, timeout=5)
            assert len(store.rows[(10, 1)].endpoints) == 1
            assert store.rows[(10, 1)].phase is Phase.PROGRESSING  # 1 of 2
            server.set_ready(NS, name, 2)
            await _until(lambda: store.rows[(10, 1)].phase is Phase.READY, timeout=5)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
            await target.close()
    finally:
        server.stop()


async def test_two_reconcilers_one_leader(apiserver: FakeApiServer, api_client_factory) -> None:
    inputs = D.Inputs((model(version(10, "v1", "sm_80"), tr=traffic("v1", ("v1", 100))),), (A100,))
    replicas = []
    for identity in ("replica-a", "replica-b"):
        api = api_client_factory()
        elector = LeaseElector(api_client=api, namespace=NS, identity=identity, lease_seconds=3.0,
                               renew_seconds=0.2, request_timeout=1.0)
        target = KubernetesTarget(api_client=api, namespace=NS, request_timeout=2.0, watch_endpoints=False)
        store = MemoryStore(inputs)
        r = Reconciler(store=store, target=target, elector=elector, resync_seconds=0.2)
        stop = asyncio.Event()
        replicas.append((identity, r, elector, store, stop, asyncio.create_task(r.run(stop))))
    try:
        await _until(lambda: any(e.is_leader for _, _, e, _, _, _ in replicas))
        await asyncio.sleep(1.0)  # several renew rounds: still exactly one leader
        leaders = [rep for rep in replicas if rep[2].is_leader]
        assert len(leaders) == 1
        leader = leaders[0]
        follower = next(rep for rep in replicas if rep is not leader)
        assert leader[1].passes > 0 and follower[1].passes == 0
        assert follower[3].rows == {}
        lease = apiserver.get("leases", NS, "grayroute-reconciler")
        assert lease["spec"]["holderIdentity"] == leader[0]
        assert apiserver.counts["create"] >= 1 and apiserver.counts["update"] >= 2

        # The leader stops: it hands the Lease over and the other replica takes charge.
        leader[4].set()
        await asyncio.wait_for(leader[5], 10)
        await _until(lambda: follower[2].is_leader, timeout=10)
        await _until(lambda: follower[1].passes > 0)
        assert apiserver.get("leases", NS, "grayroute-reconciler")["spec"]["holderIdentity"] == follower[0]
        assert apiserver.get("leases", NS, "grayroute-reconciler")["spec"]["leaseTransitions"] >= 1
    finally:
        for _, r, _, _, stop, task in replicas:
            stop.set()
            await asyncio.wait_for(task, 10)
            await r.target.close()


async def test_stale_lease_write_loses_with_409(apiserver: FakeApiServer, api_client_factory) -> None:
    a = LeaseElector(api_client=api_client_factory(), namespace=NS, identity="a", lease_seconds=30)
    b = LeaseElector(api_client=api_client_factory(), namespace=NS, identity="b", lease_seconds=30)
    assert await asyncio.to_thread(a.try_acquire_or_renew)
    assert not await asyncio.to_thread(b.try_acquire_or_renew)  # held and fresh
    # b read the lease, then a renewed: b's replace carries a stale resourceVersion.
    api = client.CoordinationV1Api(api_client_factory())
    stale = api.read_namespaced_lease("grayroute-reconciler", NS)
    assert await asyncio.to_thread(a.try_acquire_or_renew)
    stale.spec.holder_identity = "b"
    with pytest.raises(client.exceptions.ApiException) as err:
        api.replace_namespaced_lease("grayroute-reconciler", NS, stale)
    assert err.value.status == 409


async def test_healthz(apiserver: FakeApiServer, api_client_factory) -> None:
    store = MemoryStore(D.Inputs())
    r = Reconciler(store=store, target=make_target(api_client_factory))
    server = await serve_health("127.0.0.1", 0, r.health)
    port = server.sockets[0].getsockname()[1]
    try:
        def get(path: str) -> tuple[int, dict]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
                    return resp.status, json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())

        status, body = await asyncio.to_thread(get, "/healthz")
        assert status == 200 and body["status"] == "ok" and body["leader"] is True
        r.heartbeat -= 10_000
        status, body = await asyncio.to_thread(get, "/healthz")
        assert status == 503 and body["status"] == "stalled"
        assert (await asyncio.to_thread(get, "/nope"))[0] == 404
    finally:
        server.close()
        await server.wait_closed()
        await r.target.close()

