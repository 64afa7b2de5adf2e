"""The Kubernetes target: server-side apply of one Deployment + Service per desired deployment.

The official client is synchronous; every call runs in worker threads (a
bounded pool fans applies out, so hundreds of objects converge in seconds)
and never on the event loop. One field manager (``grayroute``) owns every
field we set. A pass lists what exists (three reads per namespace), applies
only objects whose content hash differs from the one they carry, deletes
managed objects that are no longer desired, and reads ready endpoints from
the Services' EndpointSlices. A watch on EndpointSlices wakes the loop when
pods become ready or go away. Only namespaced APIs are used.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from control_plane.reconciler.desired import (
    LABEL_DEPLOYMENT,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    DeploymentKey,
    DesiredDeployment,
)
from control_plane.reconciler.targets import Observed, SyncReport, Wake
from control_plane.reconciler.targets.manifests import (
    ANNOTATION_ENGINE_SHA,
    DEFAULT_FETCH_IMAGE,
    HTTP_PORT,
    SPEC_HASH,
    Rendered,
    render,
)

log = logging.getLogger(__name__)

FIELD_MANAGER = "grayroute"
APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
_MANAGED = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
# Conflicts and throttling clear up on their own; other 4xx answers will not.
_RETRYABLE_4XX = {408, 409, 429}
# A rejected object is re-sent unchanged only this rarely (an admission policy may have changed).
_REJECTED_RETRY_SECONDS = 600.0
# Pods that wait for these reasons will not start without a change (a missing Secret, a bad image).
_STUCK_REASONS = {"CreateContainerConfigError", "CreateContainerError", "ErrImagePull", "ImagePullBackOff",
                  "InvalidImageName"}
_PROBLEM_MAX = 512


def load_api_client(*, pool_size: int = 32, kubeconfig: str | None = None) -> client.ApiClient:
    """The standard lookup: in-cluster service account, else ``KUBECONFIG``, else ``~/.kube/config``."""
    configuration = client.Configuration()
    if kubeconfig is None:
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except ConfigException:
            config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)  # type: ignore[no-untyped-call]
    configuration.connection_pool_maxsize = pool_size
    return client.ApiClient(configuration)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ApiException):
        return exc.status is None or exc.status >= 500 or exc.status in _RETRYABLE_4XX
    return True  # timeouts, refused connections, protocol errors



def raw_call(call: Callable[..., Any], *args: Any, timeout: float, **kwargs: Any) -> dict[str, Any]:
    """Call without model deserialization: the reconciler reads a few fields of plain JSON."""
    response = call(*args, _preload_content=False, _request_timeout=timeout, **kwargs)
    try:
        if response.status >= 400:
            raise ApiException(http_resp=response)
        return dict(json.loads(response.data or b"{}"))
    finally:
        response.release_conn()


def describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        message = exc.reason or ""
        try:
            message = json.loads(exc.body or "{}").get("message") or message
        except ValueError:
            pass
        return f"{exc.status} {message}".strip()
    return f"{type(exc).__name__}: {exc}"


@dataclass
class _Listing:
    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Service name -> ready backend URLs.
    endpoints: dict[str, list[str]] = field(default_factory=dict)
    # (deployment name, engine sha256) -> why its pending pods cannot start.
    problems: dict[tuple[str, str], str] = field(default_factory=dict)


def _ready_urls(slice_: dict[str, Any]) -> list[str]:
    ports = slice_.get("ports") or []
    port = next((p.get("port") for p in ports if p.get("name") == "http"), None) or HTTP_PORT
    urls = []
    for endpoint in slice_.get("endpoints") or []:
        # An absent "ready" condition means ready, per the EndpointSlice API.
        if (endpoint.get("conditions") or {}).get("ready") is False:
            continue
        for address in endpoint.get("addresses") or []:
            host = f"[{address}]" if ":" in address else address
            urls.append(f"http://{host}:{port}")
    return urls


def pod_problem(pod: dict[str, Any]) -> str | None:
    """Why a pending pod cannot start, in its own words: a failed init container's termination message
    (the engine fetch writes its one-line reason there), or a container stuck waiting."""
    status = pod.get("status") or {}
    for kind, statuses in (("init container", status.get("initContainerStatuses")),
                           ("container", status.get("containerStatuses"))):
        for st in statuses or ():
            state, last = st.get("state") or {}, st.get("lastState") or {}
            terminated = state.get("terminated") or (last.get("terminated") if state.get("waiting") else None)
            if kind == "init container" and terminated and terminated.get("exitCode", 0) != 0:
                reason = (terminated.get("message") or "").strip() or \
                    f"{terminated.get('reason') or 'Error'} (exit code {terminated.get('exitCode')})"
                return f"{kind} {st.get('name')} failed: {reason}"[:_PROBLEM_MAX]
            waiting = state.get("waiting") or {}
            if waiting.get("reason") in _STUCK_REASONS:
                detail = f": {waiting['message']}" if waiting.get("message") else ""
                return f"{kind} {st.get('name')} {waiting['reason']}{detail}"[:_PROBLEM_MAX]
    return None


def _listing(deployments: dict[str, Any], services: dict[str, Any], slices: dict[str, Any]) -> _Listing:
    listing = _Listing()
    listing.deployments = {o["metadata"]["name"]: o for o in deployments.get("items") or []}
    listing.services = {o["metadata"]["name"]: o for o in services.get("items") or []}
    for s in slices.get("items") or []:
        service = (s["metadata"].get("labels") or {}).get(SERVICE_NAME_LABEL)
        if service in listing.services:
            listing.endpoints.setdefault(service, []).extend(_ready_urls(s))
    return listing


class KubernetesTarget:
    kind = "kubernetes"

    def __init__(
        self,
        *,
        api_client: client.ApiClient,
        namespace: str,
        workers: int = 32,
        request_timeout: float = 10.0,
        fetch_image: str = DEFAULT_FETCH_IMAGE,
        watch_endpoints: bool = True,
    ) -> None:
        self.api_client = api_client
        self.namespace = namespace
        self.request_timeout = request_timeout
        self.fetch_image = fetch_image
        self.watch_endpoints = watch_endpoints
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.discovery = client.DiscoveryV1Api(api_client)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="k8s-apply")
        # Namespaces we have put objects in, so garbage collection still looks there.
        self._namespaces: set[str] = {namespace}
        # (kind, ns/name) -> (content hash, message, when) of applies the server rejected.
        self._rejected: dict[tuple[str, str], tuple[str, str, float]] = {}
        self._watched: set[str] = set()
        # (namespace, name) of our Services, so the watch recognizes their slices by the standard label.
        self._services: set[tuple[str, str]] = set()
        self._wake: Wake | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    # ------------------------------------------------------------ Target

    async def start(self, wake: Wake) -> None:
        self._wake = wake

    async def sync(self, desired: Sequence[DesiredDeployment]) -> SyncReport:
        # One worker thread drives the pass; it fans out into the bounded pool.
        return await asyncio.get_running_loop().run_in_executor(None, self._sync_blocking, list(desired))

    async def close(self) -> None:
        self._stop.set()
        await asyncio.get_running_loop().run_in_executor(None, self._shutdown)

    def _shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.api_client.close()  # type: ignore[no-untyped-call]

    # ------------------------------------------------------------ the pass

    def namespace_of(self, d: DesiredDeployment) -> str:
        return d.pool.namespace or self.namespace

    def _sync_blocking(self, desired: list[DesiredDeployment]) -> SyncReport:
        report = SyncReport()
        by_ns: dict[str, list[DesiredDeployment]] = {}
        for d in desired:
            by_ns.setdefault(self.namespace_of(d), []).append(d)
        with self._lock:
            self._namespaces |= set(by_ns)
            namespaces = sorted(self._namespaces)
            self._services = {(self.namespace_of(d), d.name) for d in desired}

        # Three reads per namespace, all at once (flat, so the pool never waits on itself).
        reads = {
            (ns, what): self._pool.submit(self._raw, call, ns, label_selector=selector)
            for ns in namespaces
            for what, call, selector in (
                ("deployments", self.apps.list_namespaced_deployment, _MANAGED),
                ("services", self.core.list_namespaced_service, _MANAGED),
                ("slices", self.discovery.list_namespaced_endpoint_slice, SERVICE_NAME_LABEL),
            )
        }
        listings: dict[str, _Listing] = {}
        for ns in namespaces:
            try:
                listings[ns] = _listing(*(reads[(ns, what)].result() for what in ("deployments", "services", "slices")))
            except Exception as exc:  # noqa: BLE001 - classified and reported, the pass goes on
                report.transient_errors.append(f"listing namespace {ns}: {describe(exc)}")
        for ns in listings:
            self._ensure_watch(ns)
        self._read_problems(by_ns, listings, report)

        writes: list[tuple[DeploymentKey | None, str, Future[Any]]] = []
        pending: set[DeploymentKey] = set()
        errors: dict[DeploymentKey, str] = {}
        for ns, items in by_ns.items():
            listing = listings.get(ns)
            if listing is None:
                continue  # unknown state: never write blind
            for d in items:
                rendered = render(d, namespace=ns, fetch_image=self.fetch_image)
                for kind, obj, have in (
                    ("Deployment", rendered.deployment, listing.deployments.get(d.name)),
                    ("Service", rendered.service, listing.services.get(d.name)),
                ):
                    wanted = obj["metadata"]["annotations"][SPEC_HASH]
                    if have is not None and (have["metadata"].get("annotations") or {}).get(SPEC_HASH) == wanted:
                        continue
                    rejected = self._rejected.get((kind, f"{ns}/{d.name}"))
                    if rejected and rejected[0] == wanted and time.monotonic() - rejected[2] < _REJECTED_RETRY_SECONDS:
                        errors[d.key] = rejected[1]
                        continue
                    pending.add(d.key)
                    writes.append((d.key, f"{kind} {ns}/{d.name}", self._pool.submit(self._apply, kind, ns, obj)))
        for ns, listing in listings.items():
            keep = {d.name for d in by_ns.get(ns, [])}
            for name in sorted(set(listing.deployments) - keep):
                writes.append((None, f"delete Deployment {ns}/{name}", self._pool.submit(self._delete, "Deployment", ns, name)))
            for name in sorted(set(listing.services) - keep):
                writes.append((None, f"delete Service {ns}/{name}", self._pool.submit(self._delete, "Service", ns, name)))

        failed: set[DeploymentKey] = set()
        for key, what, fut in writes:
            report.writes += 1
            try:
                fut.result()
                if key is not None:
                    self._rejected.pop(tuple(what.split(" ", 1)), None)  # type: ignore[arg-type]
            except Exception as exc:  # noqa: BLE001
                if key is None or is_transient(exc):
                    report.transient_errors.append(f"{what}: {describe(exc)}")
                    if key is not None:
                        failed.add(key)
                else:
                    kind, ref = what.split(" ", 1)
                    message = f"{what} rejected: {describe(exc)}"
                    errors[key] = message
                    wanted_obj = self._rendered_for(desired, key, kind)
                    if wanted_obj is not None:
                        self._rejected[(kind, ref)] = (
                            wanted_obj["metadata"]["annotations"][SPEC_HASH], message, time.monotonic()
                        )

        for d in desired:
            listing = listings.get(self.namespace_of(d))
            if listing is None:
                continue  # not observed: the last known status stands (an API blip must not drop endpoints)
            dep = listing.deployments.get(d.name)
            ready = int(((dep or {}).get("status") or {}).get("readyReplicas") or 0)
            urls = tuple(listing.endpoints.get(d.name, ()))
            applied = d.key not in failed and d.key not in errors
            report.observed[d.key] = Observed(
                ready_replicas=ready,
                endpoints=urls,
                applied=applied and (dep is not None or d.key in pending),
                error=errors.get(d.key),
                problem=listing.problems.get((d.name, d.engine.sha256)),
            )
        return report

    def _read_problems(self, by_ns: dict[str, list[DesiredDeployment]], listings: dict[str, _Listing],
                       report: SyncReport) -> None:
        """Pending pods' reasons, read only where a deployment is short of ready pods, so a quiet
        resync costs no extra request."""
        short = sorted(
            ns for ns, items in by_ns.items() if ns in listings and any(
                int(((listings[ns].deployments.get(d.name) or {}).get("status") or {}).get("readyReplicas") or 0)
                < d.replicas for d in items)
        )
        reads = {ns: self._pool.submit(self._raw, self.core.list_namespaced_pod, ns, label_selector=_MANAGED,
                                       field_selector="status.phase=Pending") for ns in short}
        for ns, fut in reads.items():
            try:
                pods = fut.result().get("items") or []
            except Exception as exc:  # noqa: BLE001 - reasons are extra; the pass goes on without them
                if is_transient(exc):
                    report.transient_errors.append(f"listing pods in {ns}: {describe(exc)}")
                else:  # e.g. a Role from before pods were read: status just lacks the reason
                    log.warning("cannot read pods in %s for failure reasons: %s", ns, describe(exc))
                continue
            for pod in pods:
                meta = pod.get("metadata") or {}
                name = (meta.get("labels") or {}).get(LABEL_DEPLOYMENT)
                sha = (meta.get("annotations") or {}).get(ANNOTATION_ENGINE_SHA, "")
                problem = pod_problem(pod)
                if name and problem:
                    listings[ns].problems.setdefault((name, sha), problem)

    def _rendered_for(self, desired: list[DesiredDeployment], key: DeploymentKey, kind: str) -> dict[str, Any] | None:
        for d in desired:
            if d.key == key:
                r: Rendered = render(d, namespace=self.namespace_of(d), fetch_image=self.fetch_image)
                return r.deployment if kind == "Deployment" else r.service
        return None

    # ------------------------------------------------------------ API calls (worker threads)

    def _raw(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        return raw_call(call, *args, timeout=self.request_timeout, **kwargs)

    def _apply(self, kind: str, ns: str, obj: dict[str, Any]) -> dict[str, Any]:
        call = self.apps.patch_namespaced_deployment if kind == "Deployment" else self.core.patch_namespaced_service
        return self._raw(
            call,
            obj["metadata"]["name"],
            ns,
            obj,
            field_manager=FIELD_MANAGER,
            force=True,  # we are the only writer of these objects; take fields back after a manual edit
            _content_type=APPLY_CONTENT_TYPE,
        )

    def _delete(self, kind: str, ns: str, name: str) -> None:
        call = self.apps.delete_namespaced_deployment if kind == "Deployment" else self.core.delete_namespaced_service
        try:
            self._raw(call, name, ns)
        except ApiException as exc:
            if exc.status != 404:  # already gone is what we wanted
                raise

    # ------------------------------------------------------------ EndpointSlice watch

    def _ensure_watch(self, ns: str) -> None:
        if not self.watch_endpoints or ns in self._watched or self._stop.is_set():
            return
        self._watched.add(ns)
        threading.Thread(target=self._watch_loop, args=(ns,), name=f"watch-slices-{ns}", daemon=True).start()

    def _watch_loop(self, ns: str) -> None:
        delay = 0.5
        resource_version: str | None = None
        while not self._stop.is_set():
            w = watch.Watch()  # type: ignore[no-untyped-call]
            try:
                for event in w.stream(  # type: ignore[no-untyped-call]
                    self.discovery.list_namespaced_endpoint_slice,
                    ns,
                    label_selector=SERVICE_NAME_LABEL,
                    resource_version=resource_version,
                    timeout_seconds=30,
                    _request_timeout=(self.request_timeout, 60),
                ):
                    if self._stop.is_set():
                        break
                    obj = event.get("raw_object") or {}
                    resource_version = (obj.get("metadata") or {}).get("resourceVersion", resource_version)
                    labels = (obj.get("metadata") or {}).get("labels") or {}
                    ours = (ns, labels.get(SERVICE_NAME_LABEL)) in self._services
                    if ours or labels.get(LABEL_MANAGED_BY) == MANAGED_BY:
                        if self._wake is not None:
                            self._wake()
                delay = 0.5
            except (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                if isinstance(exc, ApiException) and exc.status == 410:
                    resource_version = None  # too old: start from now; the next pass lists anyway
                log.debug("EndpointSlice watch in %s ended: %s", ns, describe(exc))
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)
            finally:
                w.stop()  # type: ignore[no-untyped-call]
