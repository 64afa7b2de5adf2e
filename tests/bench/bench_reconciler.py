"""How long the reconciler takes to converge 200 versions x 3 pools against the API-server double.

Every API request costs an extra 20 ms (``--latency``), roughly a real API
server across a network. Converged means every deployment's status is Ready
with endpoints. Target: under 10 s. Run it as a script:

    python -m tests.bench.bench_reconciler [--workers 32] [--latency 0.02]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from control_plane.reconciler import desired as D
from control_plane.reconciler.loop import Reconciler
from control_plane.deployments.models import Phase
from control_plane.reconciler.targets.kubernetes import KubernetesTarget, load_api_client
from router.policy import Policy
from tests.reconciler.conftest import MemoryStore
from tests.reconciler.fake_apiserver import FakeApiServer

ARCHS = ("sm_80", "sm_89", "sm_90")


def inputs(models: int, versions_per_model: int) -> D.Inputs:
    pools = tuple(
        D.PoolSpec(id=i + 1, name=f"pool-{arch}", gpu_arch=arch, kind="kubernetes", trt_version="10.3",
                   namespace=f"gpu-{arch.replace('_', '')}", runtime_image="nvcr.io/nvidia/tritonserver:24.08-py3")
        for i, arch in enumerate(ARCHS)
    )
    specs = []
    vid = 0
    for m in range(models):
        versions = []
        for v in range(versions_per_model):
            vid += 1
            engines = tuple(D.EngineSpec(a, f"s3://engines/m{m}/v{v}/{a}.plan", "ab" * 32, "10.3") for a in ARCHS)
            versions.append(D.VersionSpec(vid, f"v{v}", "fp16", "10.3", engines=engines))
        weight = 100 / versions_per_model
        traffic = Policy("v0", tuple(D.Split(f"v{v}", weight) for v in range(versions_per_model)))
        specs.append(D.ModelSpec(m + 1, f"model-{m}", tuple(versions), traffic, {p.name: 2 * versions_per_model
                                                                                for p in pools}))
    return D.Inputs(tuple(specs), pools)


class RemoteDouble:
    """The API-server double in a child process, so its Python work does not contend for our GIL."""

    def __init__(self, latency: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.reconciler.fake_apiserver", "--latency", str(latency)],
            stdout=subprocess.PIPE, text=True,
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()

    def _call(self, path: str, method: str = "GET") -> dict[str, Any]:
        request = urllib.request.Request(self.url + path, method=method, data=b"{}" if method == "POST" else None,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return dict(json.loads(response.read()))

    def counts(self) -> dict[str, Any]:
        return self._call("/_fake/counts")

    def reset_counts(self) -> None:
        self._call("/_fake/reset", "POST")

    def write_kubeconfig(self, path: Path) -> Path:
        return FakeApiServer.write_kubeconfig(self, path)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


async def bench(workers: int, latency: float, models: int, versions_per_model: int) -> None:
    server = RemoteDouble(latency)
    kubeconfig = server.write_kubeconfig(Path(tempfile.mkdtemp()) / "kubeconfig")
    target = KubernetesTarget(api_client=load_api_client(kubeconfig=str(kubeconfig), pool_size=workers),
                              namespace="grayroute", workers=workers, watch_endpoints=False)
    store = MemoryStore(inputs(models, versions_per_model))
    reconciler = Reconciler(store=store, target=target)
    expected = models * versions_per_model * len(ARCHS)
    print(f"{models * versions_per_model} versions x {len(ARCHS)} pools = {expected} deployments "
          f"({2 * expected} objects), +{latency * 1000:.0f} ms per request, {workers} concurrent requests")
    try:
        started = time.perf_counter()
        passes = []
        while True:
            result = await reconciler.reconcile_once()
            passes.append((result.seconds, result.report.writes, len(result.errors)))
            ready = sum(1 for r in store.rows.values() if r.phase is Phase.READY and r.endpoints)
            if ready == expected or len(passes) > 10:
                break
        converged = time.perf_counter() - started
        for i, (seconds, writes, errors) in enumerate(passes, 1):
            print(f"  pass {i}: {seconds:6.2f} s, {writes:5d} writes, {errors} errors")
        print(f"converged: {ready}/{expected} Ready in {converged:.2f} s "
              f"({'PASS' if converged < 10 and ready == expected else 'FAIL'}: target < 10 s)")

        server.reset_counts()
        result = await reconciler.reconcile_once()
        counts = server.counts()
        print(f"no-op resync: {result.seconds:.2f} s, API writes {counts['writes']}, requests {counts['counts']}")

        # One model's canary moves: only its objects are written.
        changed = list(store.inputs.models)
        first = changed[0]
        n = len(first.versions)
        splits = (D.Split("v0", 100 - 10 * (n - 1)),) + tuple(D.Split(f"v{v}", 10) for v in range(1, n))
        changed[0] = D.ModelSpec(first.id, first.name, first.versions, Policy("v0", splits), first.replicas)
        store.inputs = D.Inputs(tuple(changed), store.inputs.pools)
        server.reset_counts()
        result = await reconciler.reconcile_once()
        print(f"one model re-weighted: {result.seconds:.2f} s, API writes {server.counts()['writes']}")
    finally:
        await target.close()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--models", type=int, default=40)
    parser.add_argument("--versions-per-model", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(bench(args.workers, args.latency, args.models, args.versions_per_model))


if __name__ == "__main__":
    main()
