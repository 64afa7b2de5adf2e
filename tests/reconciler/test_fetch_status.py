"""From registered engine to deployment status: the rendered init container's own command runs (as kubelet
would run it) against moto's S3, and its termination message reaches the deployment's status."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import text_format
from kubernetes import client
from tritonclient.grpc import model_config_pb2 as mc

from control_plane.reconciler import desired as D
from control_plane.reconciler.loop import Reconciler
from control_plane.deployments.models import Phase
from control_plane.reconciler.targets.kubernetes import KubernetesTarget, pod_problem
from control_plane.reconciler.targets.manifests import MODEL_REPOSITORY, TERMINATION_LOG
from control_plane.reconciler.triton_config import TRITON_TYPE
from tests.reconciler.conftest import MemoryStore, traffic
from tests.reconciler.fake_apiserver import FakeApiServer
from tests.reconciler.object_stores import S3, enforce_auth, moto_s3
from tests.reconciler.test_fetch import ENGINE, GRAYROUTE, SHA

NS = "inference"
URI = "s3://engines/resnet/7/sm_80.plan"
SIGNATURE = D.IoSignature(inputs=(D.Tensor("images", "FP16", (-1, 3, 32, 32)), D.Tensor("lengths", "INT32", (-1,))),
                          outputs=(D.Tensor("scores", "FP32", (-1, 10)),), max_batch_size=8)
POOL = D.PoolSpec(id=1, name="a100", gpu_arch="sm_80", kind="kubernetes", trt_version="10.3", namespace=NS,
                  runtime_image="nvcr.io/nvidia/tritonserver:24.08-py3", credentials_secret="engine-store")


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    with moto_s3(tmp_path_factory.mktemp("moto")) as store:
        store.client(**store.credentials).create_bucket(Bucket="engines")
        store.client(**store.credentials).put_object(Bucket="engines", Key="resnet/7/sm_80.plan", Body=ENGINE)
        enforce_auth(store)
        yield store


def inputs(sha: str) -> D.Inputs:
    engine = D.EngineSpec("sm_80", URI, sha, "10.3", size_bytes=len(ENGINE))
    version = D.VersionSpec(7, "7", "fp16", "10.3", engines=(engine,), signature=SIGNATURE,
                            batching=D.Batching(200, (4, 8)))
    return D.Inputs((D.ModelSpec(1, "resnet", (version,), traffic("7", ("7", 100))),), (POOL,))


def run_init_container(container: dict[str, Any], secret: dict[str, str], root: Path) -> tuple[int, str]:
    """What kubelet does with the init container: its command and args, its env plus the Secret's keys
    (envFrom), the pod's volumes at their paths (here under ``root``); returns (exit code, termination message)."""
    assert container["command"] == ["grayroute"]
    assert [e["secretRef"]["name"] for e in container["envFrom"]] == [POOL.credentials_secret]
    log = root / "termination-log"
    args = [a.replace(TERMINATION_LOG, str(log)).replace(MODEL_REPOSITORY + "/", f"{root}/models/")
            for a in container["args"]]
    env = {e["name"]: e["value"] for e in container["env"]}
    env["HOME"] = str(root)
    root.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([GRAYROUTE, *args], env={"PATH": "/usr/bin:/bin", **env, **secret},
                            capture_output=True, text=True, timeout=120)
    return result.returncode, log.read_text() if log.exists() else ""


def kubelet_reports(server: FakeApiServer, deployment: dict[str, Any], pod: str, exit_code: int,
                    message: str) -> None:
    template = deployment["spec"]["template"]
    server.put_pod(NS, pod, {
        "metadata": {"labels": template["metadata"]["labels"], "annotations": template["metadata"]["annotations"]},
        "status": {"phase": "Pending", "initContainerStatuses": [{
            "name": "fetch-engine", "ready": False, "restartCount": 1,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": exit_code, "reason": "Error", "message": message}}}]},
    })


async def test_checksum_failure_reaches_status_and_a_fixed_engine_serves(
    s3: S3, apiserver: FakeApiServer, api_client_factory: Callable[[], client.ApiClient], tmp_path: Path,
) -> None:
    apiserver.auto_ready = False  # pods start only when the test says so
    store = MemoryStore(inputs("0" * 64))  # a registered sha256 that the stored object does not have
    target = KubernetesTarget(api_client=api_client_factory(), namespace=NS, request_timeout=5.0,
                              watch_endpoints=False, fetch_image="registry.example.com/ml/grayroute:0.1.0")
    r = Reconciler(store=store, target=target, drain_seconds=600)
    await target.start(r.wake)
    try:
        assert (await r.reconcile_once()).ok
        name = D.object_name("resnet", "7", "a100")
        deployment = apiserver.get("deployments", NS, name)
        assert deployment is not None
        (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
        assert init["image"] == "registry.example.com/ml/grayroute:0.1.0"

        code, message = run_init_container(init, s3.env(), tmp_path / "pod-1")
        assert code != 0 and "sha256 mismatch" in message and message.count("\n") == 1
        assert not (tmp_path / "pod-1" / "models" / "resnet" / "1" / "model.plan").exists()
        kubelet_reports(apiserver, deployment, f"{name}-a", code, message)

        await r.reconcile_once()
        row = store.rows[(7, 1)]
        assert row.phase is Phase.FAILED and row.ready_replicas == 0
        assert row.message == f"0/1 ready; init container fetch-engine failed: {message.strip()}"

        # The engine is registered again with the right sha256: a new pod template, and the old pod's
        # failure (another engine) no longer speaks for this deployment.
        store.inputs = inputs(SHA)
        await r.reconcile_once()
        deployment = apiserver.get("deployments", NS, name)
        (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
        code, message = run_init_container(init, s3.env(), tmp_path / "pod-2")
        assert (code, message) == (0, "")
        assert (tmp_path / "pod-2" / "models" / "resnet" / "1" / "model.plan").read_bytes() == ENGINE
        await r.reconcile_once()
        assert store.rows[(7, 1)].phase is Phase.PROGRESSING

        # The config the init container wrote is Triton's, with a warm-up sample of the registered inputs.
        text = (tmp_path / "pod-2" / "models" / "resnet" / "config.pbtxt").read_text()
        config = text_format.Parse(text, mc.ModelConfig())
        assert config.name == "resnet" and config.platform == "tensorrt_plan" and config.max_batch_size == 8
        assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
        (warmup,) = config.model_warmup
        assert {k: (mc.DataType.Name(v.data_type), list(v.dims)) for k, v in warmup.inputs.items()} == {
            "images": (TRITON_TYPE["FP16"], [3, 32, 32]), "lengths": (TRITON_TYPE["INT32"], [1])}

        apiserver.set_ready(NS, name, 1)
        await r.reconcile_once()
        assert store.rows[(7, 1)].phase is Phase.READY
    finally:
        await target.close()


async def test_refused_credential_reaches_status(
    s3: S3, apiserver: FakeApiServer, api_client_factory: Callable[[], client.ApiClient], tmp_path: Path,
) -> None:
    apiserver.auto_ready = False
    store = MemoryStore(inputs(SHA))
    target = KubernetesTarget(api_client=api_client_factory(), namespace=NS, request_timeout=5.0,
                              watch_endpoints=False)
    r = Reconciler(store=store, target=target, drain_seconds=600)
    await target.start(r.wake)
    try:
        await r.reconcile_once()
        name = D.object_name("resnet", "7", "a100")
        deployment = apiserver.get("deployments", NS, name)
        (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
        code, message = run_init_container(init, s3.env(AWS_SECRET_ACCESS_KEY="rotated-away"), tmp_path)
        assert code != 0
        kubelet_reports(apiserver, deployment, f"{name}-b", code, message)
        await r.reconcile_once()
        row = store.rows[(7, 1)]
        assert row.phase is Phase.FAILED and "access refused" in row.message
    finally:
        await target.close()


def test_pods_stuck_on_a_missing_secret_say_so() -> None:
    pod = {"status": {"phase": "Pending", "initContainerStatuses": [{
        "name": "fetch-engine", "state": {"waiting": {"reason": "CreateContainerConfigError",
                                                       "message": 'secret "engine-store" not found'}}}]}}
    assert pod_problem(pod) == 'init container fetch-engine CreateContainerConfigError: secret "engine-store" not found'
    assert pod_problem({"status": {"phase": "Pending", "initContainerStatuses": [{
        "name": "fetch-engine", "state": {"running": {}}}]}}) is None
    # No message written (e.g. OOM-killed): the reason and exit code stand in.
    assert pod_problem({"status": {"initContainerStatuses": [{
        "name": "fetch-engine", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}}) == \
        "init container fetch-engine failed: OOMKilled (exit code 137)"

