"""Rendered Deployment and Service: valid against the Kubernetes schema, locked down, hash-stamped."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import kubernetes_validate
import pytest

from control_plane.reconciler import desired as D
from control_plane.reconciler.targets.manifests import SPEC_HASH, render
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
    env = {e["name"]: e["value"] for e in fetch["env"]}
    assert env["ENGINE_SHA256"] == d.engine.sha256 and env["ENGINE_URI"].endswith("sm_80.plan")
    assert "sha256sum -c" in fetch["command"][-1]
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
