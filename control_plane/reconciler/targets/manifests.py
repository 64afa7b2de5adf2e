"""Kubernetes objects for one desired deployment: a Deployment running Triton and its Service.

Pure functions. Each object carries a hash of its own content in an
annotation, so the target can tell "already applied" from "changed" by
reading what it lists anyway, and a resync with nothing changed writes nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from control_plane.reconciler.desired import LABEL_DEPLOYMENT, DesiredDeployment

SPEC_HASH = "grayroute.io/spec-hash"
HTTP_PORT = 8000
GRPC_PORT = 8001
METRICS_PORT = 8002
DEFAULT_RUNTIME_IMAGE = "nvcr.io/nvidia/tritonserver:24.08-py3"
# curl plus busybox sha256sum, running as a non-root user.
DEFAULT_FETCH_IMAGE = "curlimages/curl:8.10.1"
_UID = 1000

# Fetches the engine into the model repository and refuses a wrong checksum,
# so a corrupted or swapped artifact never becomes ready.
_FETCH_SCRIPT = """set -eu
dir="/models/$MODEL_NAME/1"
mkdir -p "$dir"
curl -fsSL --retry 5 --retry-delay 2 -o "$dir/model.plan" "$ENGINE_URI"
echo "$ENGINE_SHA256  $dir/model.plan" | sha256sum -c -
printf 'name: "%s"\\nplatform: "tensorrt_plan"\\n' "$MODEL_NAME" > "/models/$MODEL_NAME/config.pbtxt"
"""


@dataclass(frozen=True)
class Rendered:
    deployment: dict[str, Any]
    service: dict[str, Any]

    @property
    def deployment_hash(self) -> str:
        return str(self.deployment["metadata"]["annotations"][SPEC_HASH])

    @property
    def service_hash(self) -> str:
        return str(self.service["metadata"]["annotations"][SPEC_HASH])


def content_hash(obj: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _with_hash(obj: dict[str, Any]) -> dict[str, Any]:
    obj["metadata"].setdefault("annotations", {})[SPEC_HASH] = content_hash(obj)
    return obj


def _container_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }


def render(d: DesiredDeployment, *, namespace: str, fetch_image: str = DEFAULT_FETCH_IMAGE) -> Rendered:
    labels = dict(d.labels)
    meta = {"name": d.name, "namespace": namespace, "labels": labels}
    image = d.pool.runtime_image or DEFAULT_RUNTIME_IMAGE
    deployment: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": dict(meta, annotations={"grayroute.io/engine-sha256": d.engine.sha256}),
        "spec": {
            "replicas": d.replicas,
            "selector": {"matchLabels": {LABEL_DEPLOYMENT: d.name}},
            # Never drop below the desired count while new pods warm up.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": _UID,
                        "runAsGroup": _UID,
                        "fsGroup": _UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "nodeSelector": dict(d.pool.node_selector),
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "initContainers": [
                        {
                            "name": "fetch-engine",
                            "image": fetch_image,
                            "command": ["sh", "-c", _FETCH_SCRIPT],
                            "env": [
                                {"name": "MODEL_NAME", "value": d.model},
                                {"name": "ENGINE_URI", "value": d.engine.uri},
                                {"name": "ENGINE_SHA256", "value": d.engine.sha256},
                            ],
                            "volumeMounts": [{"name": "models", "mountPath": "/models"}],
                            "securityContext": _container_security(),
                        }
                    ],
                    "containers": [
                        {
                            "name": "triton",
                            "image": image,
                            "command": ["tritonserver"],
                            "args": [
                                "--model-repository=/models",
                                "--strict-readiness=true",
                                f"--http-port={HTTP_PORT}",
                                f"--grpc-port={GRPC_PORT}",
                                f"--metrics-port={METRICS_PORT}",
                            ],
                            "ports": [
                                {"name": "http", "containerPort": HTTP_PORT},
                                {"name": "grpc", "containerPort": GRPC_PORT},
                                {"name": "metrics", "containerPort": METRICS_PORT},
                            ],
                            # Model-ready means the engine is loaded and warm-up ran.
                            "readinessProbe": {
                                "httpGet": {"path": f"/v2/models/{d.model}/ready", "port": "http"},
                                "periodSeconds": 5,
                                "failureThreshold": 3,
                            },
                            "startupProbe": {
                                "httpGet": {"path": "/v2/health/live", "port": "http"},
                                "periodSeconds": 5,
                                "failureThreshold": 120,
                            },
                            "livenessProbe": {
                                "httpGet": {"path": "/v2/health/live", "port": "http"},
                                "periodSeconds": 10,
                            },
                            "resources": {"limits": {"nvidia.com/gpu": 1}},
                            "volumeMounts": [
                                {"name": "models", "mountPath": "/models", "readOnly": True},
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                            "securityContext": _container_security(),
                        }
                    ],
                    "volumes": [{"name": "models", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }
    service: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": dict(meta),
        "spec": {
            "type": "ClusterIP",
            "selector": {LABEL_DEPLOYMENT: d.name},
            "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"}],
            # Endpoints of pods that are not ready are kept out of the slices' ready set.
            "publishNotReadyAddresses": False,
        },
    }
    return Rendered(deployment=_with_hash(deployment), service=_with_hash(service))
