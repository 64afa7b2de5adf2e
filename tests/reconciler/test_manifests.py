"""Rendered Deployment and Service: valid against the Kubernetes schema, locked down, hash-stamped."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import kubernetes_validate
import pytest

from control_plane.reconciler import desired as D
from control_plane.reconciler.targets.manifests import SPEC_HASH, render
from tests.reconciler.test_triton_config import assert_warmup_matches, parse
from tests.reconciler.conftest import pool, traffic, version

KUBE_VERSIONS = sorted({"1.30.0", kubernetes_validate.utils.latest_version()})


def one(replicas: dict[str, int] | None = None) -> D.DesiredDeployment:
    m = D.ModelSpec(1, "resnet50", (version(10, "v2.1+rc1", "sm_80"),), traffic("v2.1+rc1", ("v2.1+rc1", 100)),
                    replicas or {})
    (d,) = D.plan(D.Inputs((m,), (pool(1, "a100-80gb", "sm_80"),)), kind="kubernetes",
                  now=datetime.now(UTC), drain=timedelta(seconds=1)).deployments
    return d


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_objects_validate_against_the_schema(kube_version: str) -> None:
    rendered = render(one(), namespace="gpu")
    for obj in (rendered.deployment, rendered.service):
        kubernetes_validate.validate(obj, kube_version, strict=True)


def test_pod_is_locked_down_and_serves_the_engine() -> None:
    d = one()
    dep = render(d, namespace="gpu").deployment
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"] + pod["initContainers"]:
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
    (triton,) = pod["containers"]
    assert triton["image"] == "nvcr.io/nvidia/tritonserver:24.08-py3"
    assert triton["command"] == ["tritonserver"] and "--model-repository=/models" in triton["args"]
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/models/resnet50/ready"
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    (fetch,) = pod["initContainers"]
    # The grayroute image itself fetches and verifies the engine.
    assert fetch["image"] == "grayroute:0.1.0" and fetch["command"] == ["grayroute"]
    args = fetch["args"]
    assert args[:3] == ["engine", "fetch", d.engine.uri]
    assert args[args.index("--sha256") + 1] == d.engine.sha256
    assert args[args.index("--dest") + 1] == "/models/resnet50/1/model.plan"
    assert args[args.index("--message-file") + 1] == fetch["terminationMessagePath"] == "/dev/termination-log"
    assert "envFrom" not in fetch and "serviceAccountName" not in pod  # a pool without credentials
    assert {v["name"]: v for v in pod["volumes"]}["models"] == {"name": "models", "emptyDir": {}}
    assert pod["nodeSelector"] == dict(d.pool.node_selector)
    # Pods of this deployment only: the selector is the unique name, not the shared labels.
    assert dep["spec"]["selector"]["matchLabels"] == {D.LABEL_DEPLOYMENT: d.name}


def test_hash_changes_with_content_only() -> None:
    a, b = render(one(), namespace="gpu"), render(one(), namespace="gpu")
    assert a.deployment == b.deployment and a.deployment_hash == b.deployment_hash
    scaled = render(one({"a100-80gb": 3}), namespace="gpu")
    assert scaled.deployment_hash != a.deployment_hash
    assert scaled.service_hash == a.service_hash  # scaling never rewrites the Service
    moved = render(replace(one(), engine=replace(one().engine, sha256="cd" * 32)), namespace="gpu")
    assert moved.deployment_hash != a.deployment_hash
    assert a.deployment["metadata"]["annotations"][SPEC_HASH] == a.deployment_hash


SIGNATURE = D.IoSignature(inputs=(D.Tensor("input", "FP32", (-1, 3, 224, 224)),),
                          outputs=(D.Tensor("probabilities", "FP32", (-1, 1000)),), max_batch_size=32)


def with_credentials(**credentials: str) -> D.DesiredDeployment:
    d = one()
    return replace(d, pool=replace(d.pool, **credentials), signature=SIGNATURE, batching=D.Batching(100, (16,)),
                   engine=replace(d.engine, size_bytes=123456))


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("credentials", [{"service_account": "engine-reader"}, {"credentials_secret": "s3-keys"}])
def test_credentials_go_by_reference_and_still_validate(kube_version: str, credentials: dict[str, str]) -> None:
    rendered = render(with_credentials(**credentials), namespace="gpu", fetch_image="registry.example.com/gr:1")
    kubernetes_validate.validate(rendered.deployment, kube_version, strict=True)
    pod = rendered.deployment["spec"]["template"]["spec"]
    (fetch,), (triton,) = pod["initContainers"], pod["containers"]
    assert fetch["image"] == "registry.example.com/gr:1"
    if "service_account" in credentials:
        assert pod["serviceAccountName"] == "engine-reader" and "envFrom" not in fetch
    else:
        assert fetch["envFrom"] == [{"secretRef": {"name": "s3-keys"}}]
        volume = next(v for v in pod["volumes"] if v.get("secret"))
        assert volume["secret"] == {"secretName": "s3-keys"}
        assert {"name": volume["name"], "mountPath": "/var/run/grayroute/credentials", "readOnly": True} \
            in fetch["volumeMounts"]
        assert "serviceAccountName" not in pod
    # Only the fetch sees them: Triton gets neither the Secret nor a token.
    assert "envFrom" not in triton and all(m["name"] in ("models", "tmp") for m in triton["volumeMounts"])
    assert pod["automountServiceAccountToken"] is False
    # Plain values only: the one env var set is HOME.
    assert fetch["env"] == [{"name": "HOME", "value": "/tmp"}]


def test_init_container_writes_a_triton_config_with_warmup() -> None:
    d = with_credentials(service_account="engine-reader")
    args = render(d, namespace="gpu").deployment["spec"]["template"]["spec"]["initContainers"][0]["args"]
    assert args[args.index("--size") + 1] == "123456"
    assert args[args.index("--model-config") + 1] == "/models/resnet50/config.pbtxt"
    config = parse(args[args.index("--model-config-text") + 1])
    assert config.name == "resnet50" and config.max_batch_size == 32
    assert list(config.dynamic_batching.preferred_batch_size) == [16]
    assert_warmup_matches(config, SIGNATURE)
    # Triton serves it only once warm: ready means the warm-up ran.
    triton = render(d, namespace="gpu").deployment["spec"]["template"]["spec"]["containers"][0]
    assert "--strict-readiness=true" in triton["args"]
