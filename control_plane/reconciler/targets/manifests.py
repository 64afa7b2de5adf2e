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

from control_plane.reconciler import triton_config
from control_plane.reconciler.desired import LABEL_DEPLOYMENT, DesiredDeployment

SPEC_HASH = "grayroute.io/spec-hash"
HTTP_PORT = 8000
GRPC_PORT = 8001
METRICS_PORT = 8002
DEFAULT_RUNTIME_IMAGE = "nvcr.io/nvidia/tritonserver:24.08-py3"
# The init container runs the grayroute image itself (`grayroute engine fetch`); the chart passes the
# image it installed, this is the fallback for a reconciler started by hand.
DEFAULT_FETCH_IMAGE = "grayroute:0.1.0"
_UID = 1000
MODEL_REPOSITORY = "/models"
TERMINATION_LOG = "/dev/termination-log"
# A credentials Secret's keys become the fetch's environment and files here (a GCS key file, a CA bundle).
CREDENTIALS_DIR = "/var/run/grayroute/credentials"
ANNOTATION_ENGINE_SHA = "grayroute.io/engine-sha256"


def fetch_container(d: DesiredDeployment, *, image: str) -> dict[str, Any]:
    """The init container: fetch and verify the engine, then write Triton's config next to it.

    A failure's one-line reason goes to the termination message, which the
    target reads back into the deployment's status.
    """
    model_dir = f"{MODEL_REPOSITORY}/{d.model}"
    args = ["engine", "fetch", d.engine.uri, "--sha256", d.engine.sha256]
    if d.engine.size_bytes is not None:
        args += ["--size", str(d.engine.size_bytes)]
    args += [
        "--dest", f"{model_dir}/1/model.plan",
        "--model-config", f"{model_dir}/config.pbtxt",
        "--model-config-text", triton_config.render(d.model, d.signature, d.batching),
        "--message-file", TERMINATION_LOG,
    ]
    container: dict[str, Any] = {
        "name": "fetch-engine",
        "image": image,
        "command": ["grayroute"],
        "args": args,
        # Cloud SDKs look for config and caches under $HOME; only /tmp is writable.
        "env": [{"name": "HOME", "value": "/tmp"}],
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "File",
        "volumeMounts": [{"name": "models", "mountPath": MODEL_REPOSITORY}, {"name": "tmp", "mountPath": "/tmp"}],
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "securityContext": _container_security(),
    }
    if d.pool.credentials_secret:
        # By reference only: the Secret's values never pass through grayroute.
        container["envFrom"] = [{"secretRef": {"name": d.pool.credentials_secret}}]
        container["volumeMounts"].append({"name": "engine-credentials", "mountPath": CREDENTIALS_DIR,
                                          "readOnly": True})
    return container


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
    volumes: list[dict[str, Any]] = [{"name": "models", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]
    if d.pool.credentials_secret:
        volumes.append({"name": "engine-credentials", "secret": {"secretName": d.pool.credentials_secret}})
    deployment: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": dict(meta, annotations={ANNOTATION_ENGINE_SHA: d.engine.sha256}),
        "spec": {
            "replicas": d.replicas,
            "selector": {"matchLabels": {LABEL_DEPLOYMENT: d.name}},
            # Never drop below the desired count while new pods warm up.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                # The annotation tells this engine's pods from those of a replaced one.
                "metadata": {"labels": labels, "annotations": {ANNOTATION_ENGINE_SHA: d.engine.sha256}},
                "spec": {
                    # IRSA and GKE Workload Identity bind the cloud identity to this account; the
                    # Kubernetes API token itself is never needed.
                    **({"serviceAccountName": d.pool.service_account} if d.pool.service_account else {}),
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
                    "initContainers": [fetch_container(d, image=fetch_image)],
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
                    "volumes": volumes,
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
