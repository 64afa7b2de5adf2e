"""The Helm chart, rendered and linted by the real Helm engine (helm-python-sdk)
and checked against the Kubernetes API schemas (kubernetes-validate).

Two value sets are rendered: the chart defaults, plus only the Secret names that
have no default on purpose, and ``full-values.yaml`` with every optional
feature switched on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from pydantic import TypeAdapter

CHART_DIR = Path(__file__).resolve().parents[2] / "helm" / "grayroute"
FULL_VALUES = Path(__file__).resolve().parent / "full-values.yaml"
RELEASE = "gr"
NAMESPACE = "ml-serving"

# The oldest Kubernetes minor we promise (1.31) and the newest the installed
# kubernetes-validate ships schemas for.
KUBE_VERSIONS = sorted({"1.31.0", kubernetes_validate.utils.latest_version()})

# The only values without a default, names of Secrets that must already exist, come from the
# chart's own CI values (what chart-testing lints with).
CI_VALUES = sorted((CHART_DIR / "ci").glob("*.yaml"))
REQUIRED_SECRETS = yaml.safe_load((CHART_DIR / "ci" / "default-values.yaml").read_text())
MISSING_SECRETS_SENTENCE = (
    "Set {} to the names of existing Secrets in the release namespace: the chart reads credentials only from "
    "Secrets you create (see the chart's README, Install; ci/default-values.yaml holds names for linting)."
)

# Kinds validated by the Prometheus Operator's CRD, for which
# kubernetes-validate has no schema: these alone skip schema validation.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}

# Exactly what the reconciler may do, per (API group, resource).
RECONCILER_WORKLOAD_GRANTS = {
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    ("", "services"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    ("discovery.k8s.io", "endpointslices"): {"get", "list", "watch"},
    ("", "pods"): {"list"},
}
RECONCILER_LEASE_GRANTS = {("coordination.k8s.io", "leases"): {"get", "create", "update", "patch"}}

SECRET_ENV = {
    "GRAYROUTE_DATABASE_URL",
    "GRAYROUTE_REDIS_URL",
    "GRAYROUTE_SECRET_KEY",
    "GRAYROUTE_BOOTSTRAP_ADMIN_TOKEN",
    "GRAYROUTE_TOKEN",
    "GRAYROUTE_WEBHOOK_URL",
}


@dataclass(frozen=True)
class Rendered:
    """One rendered release: the objects (with the template each came from) and NOTES."""

    objects: list[tuple[str, dict[str, Any]]]
    notes: str
    text: str

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for _, obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str, component: str) -> dict[str, Any]:
        found = [
            obj
            for obj in self.of_kind(kind)
            if obj["metadata"]["labels"].get("app.kubernetes.io/component") == component
        ]
        assert len(found) == 1, f"expected one {kind} for {component}, got {len(found)}"
        return found[0]

    def pod_specs(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for _, obj in self.objects:
            if obj["kind"] in {"Deployment", "Job"}:
                yield f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


def _full_values() -> dict[str, Any]:
    return yaml.safe_load(FULL_VALUES.read_text())


VALUE_SETS = {"defaults": lambda: REQUIRED_SECRETS, "full": _full_values}


def render(chart: helm.Chart, values: dict[str, Any]) -> Rendered:
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects: list[tuple[str, dict[str, Any]]] = []
    notes = ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append((path.rsplit("/", 1)[-1], doc))
    return Rendered(objects=objects, notes=notes, text="\n".join(manifests.values()))


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def values_case(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    return request.param, VALUE_SETS[request.param]()


@pytest.fixture(scope="module")
def rendered(chart: helm.Chart, values_case: tuple[str, dict[str, Any]]) -> Rendered:
    return render(chart, values_case[1])


@pytest.fixture(scope="module")
def full(chart: helm.Chart) -> Rendered:
    return render(chart, _full_values())


def _schema_error(chart: helm.Chart, values: dict[str, Any]) -> str:
    with pytest.raises(helm.HelmValuesError) as excinfo:
        chart.validate_schema(values)
    # `helm install` runs the same schema check before rendering anything.
    with pytest.raises(helm.HelmValuesError) as install_excinfo:
        chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    problems = {line for line in str(excinfo.value).splitlines() if line.startswith("- at ")}
    assert problems and problems <= set(str(install_excinfo.value).splitlines())
    return str(excinfo.value)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# --- Helm's own checks -------------------------------------------------------


def test_lint_is_clean(values_case: tuple[str, dict[str, Any]]) -> None:
    report = helm.lint(CHART_DIR, values_case[1], strict=True, namespace=NAMESPACE, kube_version="v1.31.0")
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == []


# --- Kubernetes API schemas ----------------------------------------------------


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_object_is_valid_kubernetes(rendered: Rendered, kube_version: str) -> None:
    failures = []
    for template, obj in rendered.objects:
        if obj["kind"] in CRD_KINDS:
            continue  # a CRD: kubernetes-validate ships schemas for built-in kinds only
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            failures.append(f"{template} {obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}")
    assert failures == []


def test_only_crd_kinds_skip_schema_validation(full: Rendered) -> None:
    """The ServiceMonitor and PrometheusRule are skipped above because no built-in schema exists for them."""
    for kind in CRD_KINDS:
        (obj,) = full.of_kind(kind)
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate(obj, KUBE_VERSIONS[-1], strict=True)
    assert {obj["kind"] for _, obj in full.objects} & CRD_KINDS == CRD_KINDS


def test_schema_validation_catches_a_broken_object(full: Rendered) -> None:
    deployment = json.loads(json.dumps(full.one("Deployment", "router")))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFS"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[0], strict=True)


# --- What gets deployed ----------------------------------------------------------


def test_default_objects(chart: helm.Chart) -> None:
    kinds = sorted(obj["kind"] for _, obj in render(chart, REQUIRED_SECRETS).objects)
    assert kinds == sorted(
        ["Deployment"] * 3
        + ["Service"] * 2
        + ["HorizontalPodAutoscaler", "PodDisruptionBudget", "Job"]
        + ["ServiceAccount", "Role", "RoleBinding"]
    )


def test_full_objects(full: Rendered) -> None:
    kinds = {obj["kind"]: 0 for _, obj in full.objects}
    for _, obj in full.objects:
        kinds[obj["kind"]] += 1
    # Roles: release namespace, two listed namespaces, one more from a pool.
    assert kinds == {
        "Deployment": 3,
        "Service": 2,
        "HorizontalPodAutoscaler": 1,
        "PodDisruptionBudget": 1,
        "Job": 2,
        "ServiceAccount": 1,
        "Role": 4,
        "RoleBinding": 4,
        "ConfigMap": 2,
        "Ingress": 1,
        "NetworkPolicy": 3,
        "ServiceMonitor": 1,
        "PrometheusRule": 1,
    }
    assert not full.of_kind("Secret")
    assert not full.of_kind("ClusterRole") and not full.of_kind("ClusterRoleBinding")


def test_one_resource_kind_per_template(rendered: Rendered) -> None:
    kinds_by_template: dict[str, set[str]] = {}
    for template, obj in rendered.objects:
        kinds_by_template.setdefault(template, set()).add(obj["kind"])
        assert obj["metadata"]["namespace"], f"{template} has no namespace"
    assert all(len(kinds) == 1 for kinds in kinds_by_template.values()), kinds_by_template
    # Only RBAC repeats, once per managed namespace.
    counts = {t: sum(1 for tt, _ in rendered.objects if tt == t) for t in kinds_by_template}
    assert {t for t, n in counts.items() if n > 1} <= {"reconciler-role.yaml", "reconciler-rolebinding.yaml"}


def test_names_fit_kubernetes_limits_for_the_longest_release_name(chart: helm.Chart) -> None:
    release = "r" * 53  # Helm's limit on release names
    manifests = chart.render(_full_values(), name=release, namespace=NAMESPACE, is_install=True)
    names = [
        doc["metadata"]["name"]
        for path, text in manifests.items()
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]
    assert names
    for name in names:
        assert len(name) <= 63 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name


def test_helpers_are_prefixed_with_the_chart_name() -> None:
    for tpl in (CHART_DIR / "templates").glob("*.tpl"):
        assert tpl.name == "_helpers.tpl"
        names = re.findall(r'define\s+"([^"]+)"', tpl.read_text())
        assert names and all(name.startswith("grayroute.") for name in names), names


def test_services_reach_their_pods(rendered: Rendered) -> None:
    for component, port in (("control-plane", 8080), ("router", 8000)):
        service = rendered.one("Service", component)
        deployment = rendered.one("Deployment", component)
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
        assert service["spec"]["ports"][0]["targetPort"] == "http"


# --- The command-line contract ----------------------------------------------------


def _container(rendered: Rendered, kind: str, component: str) -> dict[str, Any]:
    (container,) = rendered.one(kind, component)["spec"]["template"]["spec"]["containers"]
    return container


def _probe(container: dict[str, Any], probe: str) -> tuple[str, Any]:
    http = container[probe]["httpGet"]
    return http["path"], http["port"]


# The contract tests below import grayroute itself inside the test, so a broken
# module fails them alone rather than the whole chart suite at collection.


def test_every_command_is_accepted_by_the_real_cli(rendered: Rendered) -> None:
    from control_plane.cli import build_parser

    parser = build_parser()
    commands = set()
    for _, pod in rendered.pod_specs():
        for container in pod["containers"]:
            args = parser.parse_args(container["args"])  # exits on an unknown option
            commands.add(args.command)
    assert {"serve", "router", "reconcile", "db"} <= commands


# Stand-ins for what the Secrets hold, to check the settings object accepts the environment.
SECRET_STAND_INS = {
    "GRAYROUTE_DATABASE_URL": "postgresql+asyncpg://grayroute:pw@postgres/grayroute",
    "GRAYROUTE_REDIS_URL": "redis://redis:6379/0",
    "GRAYROUTE_SECRET_KEY": "0123456789abcdef0123456789abcdef",
    "GRAYROUTE_BOOTSTRAP_ADMIN_TOKEN": "gr_bootstrap-admin-token-from-a-secret",
    "GRAYROUTE_ROUTER_TOKEN": "gr_router-token-from-a-secret",
    "GRAYROUTE_WEBHOOK_URL": "https://hooks.example.com/grayroute?token=from-a-secret",
}


def test_the_settings_object_accepts_every_environment(
    rendered: Rendered, values_case: tuple[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from control_plane.settings import Settings

    for where, pod in rendered.pod_specs():
        if "router" in where:
            continue  # the router reads only its token and Redis URL
        (container,) = pod["containers"]
        with monkeypatch.context() as patch:
            for name, var in _env(container).items():
                patch.setenv(name, var["value"] if "value" in var else SECRET_STAND_INS[name])
            settings = Settings()
        assert not settings.embedded, where
        assert settings.log_level == ("DEBUG" if values_case[0] == "full" else "INFO")
        if "control-plane" in where:
            assert settings.cookie_secure is (values_case[0] == "full")
            # The routers' Secret reaches the control plane, which registers it at start.
            assert settings.router_token is not None


def test_control_plane_contract(rendered: Rendered) -> None:
    container = _container(rendered, "Deployment", "control-plane")
    assert container["args"] == ["serve", "--host", "0.0.0.0", "--port", "8080"]
    assert _probe(container, "livenessProbe") == ("/healthz", "http")
    assert _probe(container, "readinessProbe") == ("/readyz", "http")


def test_router_contract(rendered: Rendered, values_case: tuple[str, dict[str, Any]]) -> None:
    container = _container(rendered, "Deployment", "router")
    service = rendered.one("Service", "control-plane")
    control_plane_url = f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    assert container["args"] == [
        "router", "--host", "0.0.0.0", "--port", "8000",
        "--control-plane", control_plane_url,
        "--snapshot-file", "/var/cache/grayroute/snapshot.json",
        "--log-level", "debug" if values_case[0] == "full" else "info",
    ]  # fmt: skip
    assert _probe(container, "livenessProbe") == ("/v2/health/live", "http")
    assert _probe(container, "readinessProbe") == ("/v2/health/ready", "http")
    pod = rendered.one("Deployment", "router")["spec"]["template"]["spec"]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/var/cache/grayroute")
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert "emptyDir" in volume


def test_reconciler_contract(rendered: Rendered, values_case: tuple[str, dict[str, Any]]) -> None:
    deployment = rendered.one("Deployment", "reconciler")
    assert deployment["spec"]["replicas"] == 2
    container = _container(rendered, "Deployment", "reconciler")
    expected = [
        "reconcile", "--target", "kubernetes", "--namespace", NAMESPACE,
        "--health-port", "8081", "--drain-seconds", "600", "--resync-seconds", "30",
    ]  # fmt: skip
    # Without a mirror the engine fetch runs the release's own image.
    expected += ["--fetch-image", _container(rendered, "Deployment", "control-plane")["image"]]
    if values_case[0] == "full":
        expected[-5:-2] = ["900", "--resync-seconds", "20"]
        expected[-1] = "registry.example.com/mirror/grayroute:0.1.0"
    assert container["args"] == expected
    assert container["ports"] == [{"name": "health", "containerPort": 8081, "protocol": "TCP"}]
    assert _probe(container, "livenessProbe") == ("/healthz", "health")
    assert _probe(container, "readinessProbe") == ("/healthz", "health")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == rendered.of_kind("ServiceAccount")[0]["metadata"]["name"]


def test_router_autoscaling_and_disruption_budget(rendered: Rendered) -> None:
    deployment = rendered.one("Deployment", "router")
    hpa = rendered.one("HorizontalPodAutoscaler", "router")
    pdb = rendered.one("PodDisruptionBudget", "router")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert hpa["spec"]["minReplicas"] >= 2
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_autoscaling_bounds_are_checked(chart: helm.Chart) -> None:
    values = _merge(REQUIRED_SECRETS, {"router": {"autoscaling": {"minReplicas": 5, "maxReplicas": 3}}})
    with pytest.raises(helm.HelmRenderError, match="minReplicas must not be greater than router.autoscaling.maxReplicas"):
        render(chart, values)


def test_fixed_replicas_without_autoscaling(chart: helm.Chart) -> None:
    values = _merge(REQUIRED_SECRETS, {"router": {"replicas": 4, "autoscaling": {"enabled": False}}})
    rendered = render(chart, values)
    assert not rendered.of_kind("HorizontalPodAutoscaler")
    assert rendered.one("Deployment", "router")["spec"]["replicas"] == 4


def test_migration_hook_runs_before_install_and_upgrade(rendered: Rendered) -> None:
    job = rendered.one("Job", "db-upgrade")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["db", "upgrade"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_pools_are_rendered_and_imported(full: Rendered) -> None:
    configmap = full.one("ConfigMap", "pools")
    pools = json.loads(configmap["data"]["pools.json"])
    assert pools == [
        {
            "name": "a100",
            "gpu_arch": "sm_80",
            "kind": "kubernetes",
            "namespace": "inference-a100",
            "node_selector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
            "runtime_image": "nvcr.io/nvidia/tritonserver:24.08-py3",
            "trt_version": "10.3.0",
            "allowed_endpoints": [],
            "engine_credentials": {"service_account": "engine-reader"},
        },
        {
            "name": "h100",
            "gpu_arch": "sm_90",
            "kind": "kubernetes",
            "namespace": "inference-h100",
            "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            "runtime_image": "nvcr.io/nvidia/tritonserver:24.08-py3",
            "trt_version": "10.3.0",
            "allowed_endpoints": [],
            "engine_credentials": {"secret": "engine-store-credentials"},
            "gpu_hourly_price": "4.1",
            "currency": "USD",
            "gpus_per_replica": 2,
        },
        {
            # A kubernetes pool without a namespace runs in the release's.
            "name": "l4-default-ns",
            "gpu_arch": "sm_89",
            "kind": "kubernetes",
            "namespace": NAMESPACE,
            "node_selector": {},
            "runtime_image": "nvcr.io/nvidia/tritonserver:24.08-py3",
            "trt_version": "10.3.0",
            "allowed_endpoints": [],
        },
        {
            "name": "partner-cloud",
            "gpu_arch": "sm_86",
            "kind": "external",
            "namespace": None,
            "node_selector": {},
            "runtime_image": None,
            "trt_version": "10.0",
            "allowed_endpoints": ["10.20.0.0/16:8000", "*.triton.partner.example"],
        },
    ]
    job = full.one("Job", "pools-import")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["pools", "import", "/etc/grayroute/pools.json"]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/etc/grayroute")
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]


def test_pool_files_are_what_the_api_accepts(full: Rendered) -> None:
    from control_plane.registry.schemas import PoolPut

    configmap = full.one("ConfigMap", "pools")
    for pool in json.loads(configmap["data"]["pools.json"]):
        TypeAdapter(PoolPut).validate_python({k: v for k, v in pool.items() if k != "name"})


def test_duplicate_pool_names_are_refused(chart: helm.Chart) -> None:
    pool = {"name": "a100", "gpuArch": "sm_80", "kind": "local", "trtVersion": "10.3"}
    with pytest.raises(helm.HelmRenderError, match='the name "a100" is used twice'):
        render(chart, _merge(REQUIRED_SECRETS, {"pools": [pool, pool]}))


def test_no_pools_no_import(chart: helm.Chart) -> None:
    rendered = render(chart, REQUIRED_SECRETS)
    assert not rendered.of_kind("ConfigMap")
    assert [job["metadata"]["labels"]["app.kubernetes.io/component"] for job in rendered.of_kind("Job")] == [
        "db-upgrade"
    ]


def test_notes_tell_how_to_reach_the_ui_and_get_a_token(rendered: Rendered) -> None:
    control_plane = rendered.one("Deployment", "control-plane")["metadata"]["name"]
    assert (
        f"kubectl -n {NAMESPACE} exec deploy/{control_plane} -- "
        "grayroute token create --name me --role release-manager"
    ) in rendered.notes
    assert "/ui" in rendered.notes


def test_notes_use_the_ingress_host(full: Rendered) -> None:
    assert "https://grayroute.example.com/ui" in full.notes


# --- Security ----------------------------------------------------------------------


def test_every_pod_is_hardened(rendered: Rendered) -> None:
    pods = list(rendered.pod_specs())
    assert len(pods) >= 4
    for where, pod in pods:
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True, where
        assert security["runAsUser"] != 0, where
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), where
        tmp_volumes = set()
        for volume in pod["volumes"]:
            assert set(volume) & {"emptyDir", "configMap"}, f"{where}: unexpected volume {volume}"
            if "emptyDir" in volume:
                tmp_volumes.add(volume["name"])
        for container in pod["containers"] + pod.get("initContainers", []):
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert context.get("privileged", False) is False, where
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
            tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert len(tmp) == 1 and tmp[0]["name"] in tmp_volumes, f"{where}: /tmp is not an emptyDir"
            assert container["resources"]["requests"]["memory"], where
            assert container["resources"]["limits"]["memory"], where


def test_no_service_link_variables(rendered: Rendered) -> None:
    # A release named "grayroute" would otherwise inject GRAYROUTE_* variables.
    for where, pod in rendered.pod_specs():
        assert pod["enableServiceLinks"] is False, where


def test_platform_assigned_uids_keep_the_hardening(chart: helm.Chart) -> None:
    values = _merge(REQUIRED_SECRETS, {"podSecurity": {"runAsUser": None, "runAsGroup": None}})
    chart.validate_schema(values)
    rendered = render(chart, values)
    for where, pod in rendered.pod_specs():
        assert "runAsUser" not in pod["securityContext"] and "fsGroup" not in pod["securityContext"], where
        assert pod["securityContext"]["runAsNonRoot"] is True, where
    for _, obj in rendered.objects:
        kubernetes_validate.validate(obj, KUBE_VERSIONS[0], strict=True)


def test_root_uid_is_rejected(chart: helm.Chart) -> None:
    message = _schema_error(chart, _merge(REQUIRED_SECRETS, {"podSecurity": {"runAsUser": 0}}))
    assert "at '/podSecurity/runAsUser': minimum: got 0, want 1" in message


def test_only_the_reconciler_gets_an_api_token(rendered: Rendered) -> None:
    for where, pod in rendered.pod_specs():
        if "reconciler" in where:
            assert pod["serviceAccountName"].endswith("-reconciler")
        else:
            assert pod["automountServiceAccountToken"] is False, where
            assert "serviceAccountName" not in pod, where


def test_long_running_pods_have_probes(rendered: Rendered) -> None:
    for deployment in rendered.of_kind("Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            assert container["livenessProbe"]["httpGet"], deployment["metadata"]["name"]
            assert container["readinessProbe"]["httpGet"], deployment["metadata"]["name"]


def _grants(role: dict[str, Any]) -> set[tuple[str, str, str, str | None]]:
    grants = set()
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs", "resourceNames"}, rule
        names = rule.get("resourceNames") or [None]
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    for name in names:
                        grants.add((group, resource, verb, name))
    return grants


def _allowed(table: dict[tuple[str, str], set[str]]) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for (group, resource), verbs in table.items() for verb in verbs}


def test_reconciler_role_grants_nothing_beyond_its_list(
    rendered: Rendered, values_case: tuple[str, dict[str, Any]]
) -> None:
    expected_namespaces = {NAMESPACE}
    if values_case[0] == "full":
        # Listed namespaces plus those of the kubernetes pools.
        expected_namespaces |= {"inference-a100", "inference-shared", "inference-h100"}
    roles = {role["metadata"]["namespace"]: role for role in rendered.of_kind("Role")}
    assert set(roles) == expected_namespaces
    assert len(rendered.of_kind("Role")) == len(expected_namespaces)
    workload = _allowed(RECONCILER_WORKLOAD_GRANTS)
    lease = _allowed(RECONCILER_LEASE_GRANTS)
    for namespace, role in roles.items():
        grants = _grants(role)
        assert not any("*" in grant for grant in grants), grants
        granted = {(group, resource, verb) for group, resource, verb, _ in grants}
        if namespace == NAMESPACE:
            assert granted == workload | lease
            # Everything but `create` is pinned to the one Lease.
            for _group, resource, verb, name in grants:
                if resource == "leases" and verb != "create":
                    assert name == "grayroute-reconciler"
        else:
            assert granted == workload, "the Lease lives in the release namespace only"
        assert all(name is None for _, resource, _, name in grants if resource != "leases")


def test_reconciler_bindings(rendered: Rendered) -> None:
    account = rendered.of_kind("ServiceAccount")[0]["metadata"]
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in rendered.of_kind("Role")}
    bindings = rendered.of_kind("RoleBinding")
    assert len(bindings) == len(roles)
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert (binding["metadata"]["namespace"], binding["roleRef"]["name"]) in roles
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
        ]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {var["name"]: var for var in container.get("env", [])}


def test_secrets_come_only_from_secret_references(full: Rendered) -> None:
    values = _full_values()["secrets"]
    expected_refs = {
        "GRAYROUTE_DATABASE_URL": values["database"],
        "GRAYROUTE_REDIS_URL": values["redis"],
        "GRAYROUTE_SECRET_KEY": values["sessionKey"],
        "GRAYROUTE_TOKEN": values["routerToken"],
        "GRAYROUTE_BOOTSTRAP_ADMIN_TOKEN": values["bootstrapAdminToken"],
        "GRAYROUTE_WEBHOOK_URL": values["rolloutWebhook"],
    }
    seen = set()
    for where, pod in full.pod_specs():
        for container in pod["containers"]:
            for name, var in _env(container).items():
                if name in SECRET_ENV:
                    seen.add(name)
                    assert "value" not in var, f"{where}: {name} in clear text"
                    assert var["valueFrom"]["secretKeyRef"] == expected_refs[name], where
    assert seen == SECRET_ENV
    assert not full.of_kind("Secret")
    # No credential-bearing URL or inline secret anywhere in the manifests.
    assert not re.search(r"(postgres(ql)?(\+\w+)?|redis|rediss)://", full.text)


def test_each_component_gets_only_the_secrets_it_needs(full: Rendered) -> None:
    backend = {"GRAYROUTE_LOG_LEVEL", "GRAYROUTE_DATABASE_URL", "GRAYROUTE_REDIS_URL", "GRAYROUTE_SECRET_KEY"}
    assert set(_env(_container(full, "Deployment", "router"))) == {
        "GRAYROUTE_LOG_LEVEL",
        "GRAYROUTE_REDIS_URL",
        "GRAYROUTE_TOKEN",
    }
    control_plane = _env(_container(full, "Deployment", "control-plane"))
    assert set(control_plane) == backend | {
        "GRAYROUTE_BOOTSTRAP_ADMIN_TOKEN",
        "GRAYROUTE_COOKIE_SECURE",
        "GRAYROUTE_ROUTER_TOKEN",  # registered at start for the routers
        "GRAYROUTE_ROLLOUT_TICK_SECONDS",
        "GRAYROUTE_WEBHOOK_URL",  # rollout events
    }
    assert control_plane["GRAYROUTE_ROLLOUT_TICK_SECONDS"]["value"] == "5"
    assert set(_env(_container(full, "Deployment", "reconciler"))) == backend
    for component in ("db-upgrade", "pools-import"):
        assert set(_env(_container(full, "Job", component))) == backend


def test_bootstrap_admin_token_is_optional(rendered: Rendered, values_case: tuple[str, dict[str, Any]]) -> None:
    env = _env(_container(rendered, "Deployment", "control-plane"))
    assert ("GRAYROUTE_BOOTSTRAP_ADMIN_TOKEN" in env) == (values_case[0] == "full")
    assert ("GRAYROUTE_WEBHOOK_URL" in env) == (values_case[0] == "full")  # no webhook unless one is named


@pytest.mark.parametrize(
    ("values", "secure"),
    [
        (REQUIRED_SECRETS, "false"),
        (_full_values(), "true"),  # the Ingress terminates TLS
        (_merge(_full_values(), {"controlPlane": {"secureCookies": False}}), "false"),
        (_merge(REQUIRED_SECRETS, {"controlPlane": {"secureCookies": True}}), "true"),
    ],
    ids=["plain", "ingress-tls", "forced-off", "forced-on"],
)
def test_session_cookies_are_secure_behind_tls(chart: helm.Chart, values: dict[str, Any], secure: str) -> None:
    env = _env(_container(render(chart, values), "Deployment", "control-plane"))
    assert env["GRAYROUTE_COOKIE_SECURE"] == {"name": "GRAYROUTE_COOKIE_SECURE", "value": secure}


def test_a_secret_value_cannot_be_put_in_values(chart: helm.Chart) -> None:
    values = _merge(REQUIRED_SECRETS, {"secrets": {"database": {"value": "postgresql+asyncpg://u:p@db/grayroute"}}})
    message = _schema_error(chart, values)
    assert "at '/secrets/database': additional properties 'value' not allowed" in message


def test_network_policies(full: Rendered) -> None:
    control_plane = full.one("NetworkPolicy", "control-plane")
    router_pods = full.one("Deployment", "router")["spec"]["selector"]["matchLabels"]
    (rule,) = control_plane["spec"]["ingress"]
    assert {"podSelector": {"matchLabels": router_pods}} in rule["from"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    router = full.one("NetworkPolicy", "router")
    (rule,) = router["spec"]["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}] and len(rule["from"]) == 2
    reconciler = full.one("NetworkPolicy", "reconciler")
    assert reconciler["spec"]["ingress"] == [] and reconciler["spec"]["policyTypes"] == ["Ingress"]


def test_ingress_and_service_monitor(full: Rendered) -> None:
    (ingress,) = full.of_kind("Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": full.one("Service", "control-plane")["metadata"]["name"], "port": {"name": "http"}}
    (monitor,) = full.of_kind("ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}]
    for component in ("control-plane", "router"):
        labels = full.one("Service", component)["metadata"]["labels"]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert labels["app.kubernetes.io/component"] in monitor["spec"]["selector"]["matchExpressions"][0]["values"]


# --- values.yaml and values.schema.json ------------------------------------------


@pytest.mark.parametrize("ci_values", CI_VALUES, ids=lambda p: p.name)
def test_the_chart_lints_and_renders_with_its_ci_values(chart: helm.Chart, ci_values: Path) -> None:
    values = yaml.safe_load(ci_values.read_text())
    report = helm.lint(CHART_DIR, values, strict=True, namespace=NAMESPACE, kube_version="v1.31.0")
    assert report["errors"] == [] and [m for m in report["messages"] if m["severity"] >= 2] == []
    assert render(chart, values).of_kind("Deployment")
    assert {"database", "redis", "sessionKey", "routerToken"} <= set(values["secrets"])


def test_chart_defaults_alone_are_refused_in_one_sentence_naming_each_missing_secret(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmError) as refused:
        render(chart, {})
    names = "secrets.database.name, secrets.redis.name, secrets.sessionKey.name, secrets.routerToken.name"
    assert MISSING_SECRETS_SENTENCE.format(names) in str(refused.value)
    assert "bootstrapAdminToken" not in str(refused.value)  # optional
    # Only what is missing is named.
    values = json.loads(json.dumps(REQUIRED_SECRETS))
    del values["secrets"]["redis"]["name"]
    with pytest.raises(helm.HelmError) as one:
        render(chart, values)
    assert MISSING_SECRETS_SENTENCE.format("secrets.redis.name") in str(one.value)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"secrets": {"redis": {"name": ""}}}, "at '/secrets/redis/name': minLength: got 0, want 1"),
        ({"secrets": {"routerToken": {"name": 42}}}, "at '/secrets/routerToken/name': got number, want string"),
    ],
    ids=["empty", "number"],
)
def test_bad_secret_name_is_rejected(chart: helm.Chart, override: dict[str, Any], expected: str) -> None:
    assert expected in _schema_error(chart, _merge(REQUIRED_SECRETS, override))


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"router": {"autoscaling": {"maxReplicas": "ten"}}}, "at '/router/autoscaling/maxReplicas': got string, want integer"),
        ({"controlPlane": {"replicas": 1.5}}, "at '/controlPlane/replicas': got number, want integer"),
        ({"ingress": {"enabled": "yes"}}, "at '/ingress/enabled': got string, want boolean"),
        ({"reconciler": {"managedNamespaces": "team-a"}}, "at '/reconciler/managedNamespaces': got string, want array"),
        ({"controlPlane": {"service": {"port": 70000}}}, "at '/controlPlane/service/port': maximum: got 70,000, want 65,535"),
        ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy': value must be one of"),
        ({"controlPlan": {"replicas": 3}}, "at '': additional properties 'controlPlan' not allowed"),
        (
            {"pools": [{"name": "a100", "gpuArch": "sm_80", "kind": "kubernetes", "trtVersion": 10.3}]},
            "at '/pools/0/trtVersion': got number, want string",
        ),
        (
            {"pools": [{"name": "a100", "gpuArch": "sm_80", "kind": "gpu", "trtVersion": "10.3"}]},
            "at '/pools/0/kind': value must be one of",
        ),
        ({"pools": [{"name": "a100", "gpuArch": "sm_80", "kind": "local"}]}, "at '/pools/0': missing property 'trtVersion'"),
        (
            {"pools": [{"name": "a100", "gpuArch": "sm_80", "kind": "local", "trtVersion": "10.3", "gpuHourlyPrice": 2}]},
            "at '/pools/0': properties 'currency' required, if 'gpuHourlyPrice' exists",
        ),
        (
            {"pools": [{"name": "a100", "gpuArch": "sm_80", "kind": "local", "trtVersion": "10.3", "gpuHourlyPrice": 2,
                        "currency": "usd"}]},
            "at '/pools/0/currency'",
        ),
    ],
    ids=["string-for-int", "float-for-int", "string-for-bool", "string-for-list", "port-range", "enum", "typo",
         "unquoted-version", "pool-kind", "pool-no-trt", "price-no-currency", "currency-lowercase"],
)  # fmt: skip
def test_wrong_types_are_rejected(chart: helm.Chart, override: dict[str, Any], expected: str) -> None:
    message = _schema_error(chart, _merge(REQUIRED_SECRETS, override))
    assert expected in message, message


def test_lint_reports_schema_errors() -> None:
    report = helm.lint(CHART_DIR, _merge(REQUIRED_SECRETS, {"controlPlane": {"replicas": "two"}}), strict=True,
                       namespace=NAMESPACE)
    assert any("at '/controlPlane/replicas': got string, want integer" in error for error in report["errors"])


def test_plain_helm_lint_with_the_chart_defaults_passes() -> None:
    # Lint mode lets templates run without the Secret names (Helm's own rule for required values);
    # install and template refuse them with the sentence tested above.
    report = helm.lint(CHART_DIR, {}, strict=True, namespace=NAMESPACE, kube_version="v1.31.0")
    assert report["errors"] == [] and [m for m in report["messages"] if m["severity"] >= 2] == [], report


def _schema_node(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = schema["definitions"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def test_every_value_is_documented_and_typed() -> None:
    """Each key of values.yaml has a comment above it and a declared type in the schema.

    Keys inside free-form maps (resources, annotations, selectors) are data,
    not chart settings, and are not checked.
    """
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, dict[str, Any] | None]] = [(-1, schema)]
    checked = 0
    for number, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z][\w-]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1]
        node = None
        if parent is not None and "properties" in parent:
            assert key in parent["properties"], f"values.yaml:{number + 1}: {key} is not in the schema"
            node = _schema_node(schema, parent["properties"][key])
            assert "type" in node or "anyOf" in node, f"values.yaml:{number + 1}: {key} has no type"
            previous = next(text for text in reversed(lines[:number]) if text.strip())
            assert previous.strip().startswith("#"), f"values.yaml:{number + 1}: {key} has no comment above it"
            checked += 1
        stack.append((indent, node))
    assert checked > 60


def test_defaults_in_values_yaml_match_the_chart(chart: helm.Chart) -> None:
    assert chart.values == yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert chart.metadata["name"] == "grayroute"
