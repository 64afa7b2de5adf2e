"""An in-memory Kubernetes API server for tests: a threaded HTTP server on loopback.

It implements just what the reconciler's real `kubernetes` client calls —
server-side apply (PATCH application/apply-patch+yaml), get, list with label
selectors, watch, delete, create/replace with optimistic concurrency (409 on a
stale resourceVersion) — for Deployments, Services, EndpointSlices and
Leases. A tiny "controller" stands in for kube-controller-manager: it marks
Deployments ready and maintains each Service's EndpointSlice. Requests are
counted by verb, and faults (status codes, stalls, latency) can be injected.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import yaml

_PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<gv>[^/]+))/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?/?$"
)
_KINDS = {
    "deployments": ("apps/v1", "Deployment"),
    "services": ("v1", "Service"),
    "endpointslices": ("discovery.k8s.io/v1", "EndpointSlice"),
    "leases": ("coordination.k8s.io/v1", "Lease"),
    # Only listed by the reconciler; tests put them where kubelet would (see put_pod).
    "pods": ("v1", "Pod"),
}
SERVICE_NAME_LABEL = "kubernetes.io/service-name"

Key = tuple[str, str, str]  # (plural, namespace, name)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _matches(labels: dict[str, str], selector: str | None) -> bool:
    if not selector:
        return True
    # Split on commas outside parentheses ("k in (a,b),x=y").
    terms = re.findall(r"[^,(]+(?:\([^)]*\))?[^,]*", selector)
    for term in (t.strip() for t in terms if t.strip()):
        if m := re.fullmatch(r"(\S+)\s+(in|notin)\s+\((.*)\)", term):
            values = {v.strip() for v in m.group(3).split(",")}
            inside = labels.get(m.group(1)) in values
            if inside != (m.group(2) == "in"):
                return False
        elif "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


class _Fault:
    def __init__(self, count: int, status: int, stall: float, verbs: set[str] | None,
                 resources: set[str] | None = None) -> None:
        self.count = count
        self.status = status
        self.stall = stall
        self.verbs = verbs
        self.resources = resources

    def matches(self, verb: str, plural: str) -> bool:
        return (self.count > 0 and (self.verbs is None or verb in self.verbs)
                and (self.resources is None or plural in self.resources))


class _Server(ThreadingHTTPServer):
    # The default backlog of 5 drops connections when a client opens dozens at once.
    request_queue_size = 256


class FakeApiServer:
    """Start with :meth:`start`; point a client at :meth:`write_kubeconfig`."""

    def __init__(self, *, auto_ready: bool = True, latency: float = 0.0) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self.counts: Counter[str] = Counter()
        self.counts_by_resource: Counter[tuple[str, str]] = Counter()
        self.auto_ready = auto_ready
        self.latency = latency
        # Deployment name -> number of ready pods, overriding auto_ready.
        self.ready_override: dict[tuple[str, str], int] = {}
        self._faults: list[_Fault] = []
        self._rv = 0
        self._events: list[tuple[int, str, str, str, dict[str, Any]]] = []  # (rv, plural, ns, type, obj)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._closing = False
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeApiServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-apiserver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._closing = True
            self._changed.notify_all()
        self._server.shutdown()
        self._server.server_close()

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "test-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
            "current-context": "fake",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    # ------------------------------------------------------------ test controls

    def fail(self, count: int, *, status: int = 500, verbs: set[str] | None = None,
             resources: set[str] | None = None) -> None:
        """Answer the next ``count`` matching requests with ``status``."""
        with self._lock:
            self._faults.append(_Fault(count, status, 0.0, verbs, resources))

    def stall(self, count: int, *, seconds: float, verbs: set[str] | None = None) -> None:
        """Hold the next ``count`` matching requests for ``seconds`` before answering them."""
        with self._lock:
            self._faults.append(_Fault(count, 0, seconds, verbs))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def writes(self) -> int:
        return sum(self.counts[v] for v in ("apply", "create", "update", "delete", "patch"))

    def reset_counts(self) -> None:
        with self._lock:
            self.counts.clear()
            self.counts_by_resource.clear()

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self.objects.get((plural, namespace, name))

    def names(self, plural: str, namespace: str | None = None) -> set[str]:
        with self._lock:
            return {k[2] for k in self.objects if k[0] == plural and (namespace is None or k[1] == namespace)}

    def put_pod(self, namespace: str, name: str, pod: dict[str, Any]) -> None:
        """Store a pod as kubelet reports it (metadata and status), e.g. with a failed init container."""
        with self._lock:
            created = ("pods", namespace, name) not in self.objects
            self._store("pods", namespace, name, self._new("pods", namespace, name, pod), created)

    def set_ready(self, namespace: str, deployment: str, ready: int) -> None:
        with self._lock:
            self.ready_override[(namespace, deployment)] = ready
            self._run_controller(namespace, deployment)

    # ------------------------------------------------------------ storage

    def _bump(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _record(self, plural: str, ns: str, kind: str, obj: dict[str, Any]) -> None:
        self._events.append((self._rv, plural, ns, kind, json.loads(json.dumps(obj))))
        self._changed.notify_all()

    def _store(self, plural: str, ns: str, name: str, obj: dict[str, Any], created: bool) -> None:
        obj["metadata"]["resourceVersion"] = self._bump()
        self.objects[(plural, ns, name)] = obj
        self._record(plural, ns, "ADDED" if created else "MODIFIED", obj)

    def _remove(self, key: Key) -> dict[str, Any]:
        obj = self.objects.pop(key)
        obj["metadata"]["resourceVersion"] = self._bump()
        self._record(key[0], key[1], "DELETED", obj)
        return obj

    def _new(self, plural: str, ns: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        api_version, kind = _KINDS[plural]
        obj = json.loads(json.dumps(body))
        obj["apiVersion"], obj["kind"] = api_version, kind
        meta = obj.setdefault("metadata", {})
        meta.update(name=name, namespace=ns, uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        return obj

    def _apply(self, plural: str, ns: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        current = self.objects.get((plural, ns, name))
        if current is None:
            obj = self._new(plural, ns, name, body)
            self._store(plural, ns, name, obj, created=True)
            return obj
        merged = json.loads(json.dumps(current))
        meta = body.get("metadata", {})
        for field in ("labels", "annotations"):
            if field in meta:
                merged["metadata"][field] = meta[field]
        for field, value in body.items():
            if field not in ("metadata", "status", "apiVersion", "kind"):
                merged[field] = value
        if merged == current:
            return current  # a no-op apply does not bump resourceVersion, as on a real server
        if merged.get("spec") != current.get("spec"):
            merged["metadata"]["generation"] = int(current["metadata"].get("generation", 1)) + 1
        self._store(plural, ns, name, merged, created=False)
        return merged

    def _run_controller(self, ns: str | None = None, name: str | None = None) -> None:
        """Deployment status and EndpointSlices, as kube-controller-manager would keep them.

        After a write only the touched namespace/name is settled, so large
        benchmarks stay linear; without arguments everything is.
        """
        if ns is None:
            for plural, ns2, name2 in list(self.objects):
                if plural in ("deployments", "services"):
                    self._settle(ns2, name2)
            return
        self._settle(ns, name or "")

    def _settle(self, ns: str, name: str) -> None:
        dep = self.objects.get(("deployments", ns, name))
        if dep is not None:
            replicas = int(dep.get("spec", {}).get("replicas", 1))
            ready = self.ready_override.get((ns, name), replicas if self.auto_ready else 0)
            ready = min(ready, replicas)
            status = {"replicas": replicas, "readyReplicas": ready,
                      "observedGeneration": dep["metadata"].get("generation", 1)}
            if dep.get("status") != status:
                updated = json.loads(json.dumps(dep))
                updated["status"] = status
                self._store("deployments", ns, name, updated, created=False)
        # The Service of a Deployment shares its name here (that is how grayroute names them).
        svc = self.objects.get(("services", ns, name))
        slice_name = f"{name}-slice"
        if svc is None:
            if ("endpointslices", ns, slice_name) in self.objects:
                self._remove(("endpointslices", ns, slice_name))
            return
        selector = svc.get("spec", {}).get("selector") or {}
        pods: list[tuple[bool, int]] = []
        dep = self.objects.get(("deployments", ns, name))
        if dep is not None:
            labels = dep["spec"]["template"]["metadata"].get("labels", {})
            if selector and all(labels.get(k) == v for k, v in selector.items()):
                replicas = int(dep["spec"].get("replicas", 1))
                ready = int(dep.get("status", {}).get("readyReplicas", 0))
                pods = [(i < ready, i) for i in range(replicas)]
        octet = sum(name.encode()) % 250
        endpoints = [
            {"addresses": [f"10.{octet}.{len(name) % 250}.{i + 1}"], "conditions": {"ready": is_ready}}
            for is_ready, i in pods
        ]
        body = {
            "metadata": {"labels": {SERVICE_NAME_LABEL: name, **svc["metadata"].get("labels", {})}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "http", "port": 8000, "protocol": "TCP"}],
        }
        current = self.objects.get(("endpointslices", ns, slice_name))
        if current is None:
            self._store("endpointslices", ns, slice_name, self._new("endpointslices", ns, slice_name, body), True)
        elif current.get("endpoints") != endpoints:
            updated = json.loads(json.dumps(current))
            updated["endpoints"] = endpoints
            self._store("endpointslices", ns, slice_name, updated, created=False)

    # ------------------------------------------------------------ HTTP

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; with Nagle each response would wait for a delayed ACK.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client gave up (a timeout under test)

            def _status(self, code: int, reason: str, message: str) -> None:
                self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                  "reason": reason, "message": message, "code": code})

            def _body(self) -> dict[str, Any]:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b"{}"
                try:
                    parsed = json.loads(raw)  # JSON is YAML; PyYAML would take tens of ms per object
                except ValueError:
                    parsed = yaml.safe_load(raw)
                return parsed or {}

            def do_GET(self) -> None:
                self._dispatch("GET")

            def do_POST(self) -> None:
                self._dispatch("POST")

            def do_PUT(self) -> None:
                self._dispatch("PUT")

            def do_PATCH(self) -> None:
                self._dispatch("PATCH")

            def do_DELETE(self) -> None:
                self._dispatch("DELETE")

            def _dispatch(self, method: str) -> None:
                url = urlparse(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                if url.path.startswith("/_fake/"):
                    self._control(method, url.path)
                    return
                m = _PATH.match(url.path)
                if not m or m.group("plural") not in _KINDS:
                    self._body() if method in ("POST", "PUT", "PATCH") else None
                    self._status(404, "NotFound", f"no route for {url.path}")
                    return
                plural, ns, name = m.group("plural"), m.group("ns"), m.group("name")
                watch = query.get("watch") in ("true", "1")
                verb = {
                    "GET": "watch" if watch else ("get" if name else "list"),
                    "POST": "create",
                    "PUT": "update",
                    "DELETE": "delete",
                    "PATCH": "apply" if "apply-patch" in (self.headers.get("Content-Type") or "") else "patch",
                }[method]
                body = self._body() if method in ("POST", "PUT", "PATCH") else {}
                with server._lock:
                    server.counts[verb] += 1
                    server.counts_by_resource[(verb, plural)] += 1
                    fault = next((f for f in server._faults if f.matches(verb, plural)), None)
                    if fault:
                        fault.count -= 1
                if server.latency:
                    time.sleep(server.latency)
                if fault and fault.stall:
                    time.sleep(fault.stall)
                elif fault:
                    self._status(fault.status, "InternalError", "injected fault")
                    return
                if watch:
                    self._watch(plural, ns, query)
                    return
                with server._lock:
                    code, payload = server._serve(verb, plural, ns, name, query, body)
                    if verb in ("apply", "create", "update", "delete") and code < 300:
                        server._run_controller(ns, name or body.get("metadata", {}).get("name"))
                self._send(code, payload)

            def _control(self, method: str, path: str) -> None:
                # Test controls for a double running in another process (the benchmark).
                if path == "/_fake/counts":
                    with server._lock:
                        self._send(200, {"counts": dict(server.counts), "writes": server.writes(),
                                         "objects": len(server.objects)})
                elif path == "/_fake/reset" and method == "POST":
                    self._body()
                    server.reset_counts()
                    self._send(200, {})
                else:
                    self._status(404, "NotFound", path)

            def _watch(self, plural: str, ns: str, query: dict[str, str]) -> None:
                since = int(query.get("resourceVersion") or 0)
                selector = query.get("labelSelector")
                deadline = time.monotonic() + float(query.get("timeoutSeconds") or 30)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                cursor = since
                try:
                    while time.monotonic() < deadline:
                        with server._lock:
                            events = [e for e in server._events if e[0] > cursor and e[1] == plural and e[2] == ns]
                            if not events:
                                if server._closing:
                                    break
                                server._changed.wait(timeout=min(0.5, max(0.0, deadline - time.monotonic())))
                                continue
                        for rv, _, _, kind, obj in events:
                            cursor = rv
                            if _matches(obj["metadata"].get("labels", {}), selector):
                                line = json.dumps({"type": kind, "object": obj}).encode() + b"\n"
                                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                                self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass
                self.close_connection = True

        return Handler

    def _serve(
        self, verb: str, plural: str, ns: str, name: str | None, query: dict[str, str], body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        api_version, kind = _KINDS[plural]
        key = (plural, ns, name or "")
        if verb == "list":
            items = [
                obj
                for (p, n, _), obj in sorted(self.objects.items())
                if p == plural and n == ns and _matches(obj["metadata"].get("labels", {}), query.get("labelSelector"))
                and _fields_match(obj, query.get("fieldSelector"))
            ]
            return 200, {"apiVersion": api_version, "kind": f"{kind}List",
                         "metadata": {"resourceVersion": str(self._rv)}, "items": items}
        if verb == "get":
            if key not in self.objects:
                return 404, _status(404, "NotFound", f'{plural} "{name}" not found')
            return 200, self.objects[key]
        if verb == "apply":
            if not query.get("fieldManager"):
                return 400, _status(400, "BadRequest", "fieldManager is required for apply requests")
            if body.get("metadata", {}).get("name") not in (None, name):
                return 400, _status(400, "BadRequest", "the name of the object does not match the URL")
            return 200, self._apply(plural, ns, name or "", body)
        if verb == "create":
            name = body.get("metadata", {}).get("name")
            if not name:
                return 422, _status(422, "Invalid", "metadata.name is required")
            if (plural, ns, name) in self.objects:
                return 409, _status(409, "AlreadyExists", f'{plural} "{name}" already exists')
            obj = self._new(plural, ns, name, body)
            self._store(plural, ns, name, obj, created=True)
            return 201, obj
        if verb == "update":
            current = self.objects.get(key)
            if current is None:
                return 404, _status(404, "NotFound", f'{plural} "{name}" not found')
            rv = body.get("metadata", {}).get("resourceVersion")
            if rv and rv != current["metadata"]["resourceVersion"]:
                return 409, _status(409, "Conflict", "the object has been modified; please apply your changes to the latest version")
            obj = json.loads(json.dumps(body))
            obj["apiVersion"], obj["kind"] = api_version, kind
            obj["metadata"] = {**current["metadata"], **obj.get("metadata", {})}
            self._store(plural, ns, name or "", obj, created=False)
            return 200, obj
        if verb == "delete":
            if key not in self.objects:
                return 404, _status(404, "NotFound", f'{plural} "{name}" not found')
            self._remove(key)
            return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}
        return 405, _status(405, "MethodNotAllowed", verb)


def _fields_match(obj: dict[str, Any], selector: str | None) -> bool:
    """Field selectors of the form ``a.b=value`` (what the reconciler sends: status.phase=Pending)."""
    for term in filter(None, (selector or "").split(",")):
        path, _, wanted = term.partition("=")
        value: Any = obj
        for part in path.strip().split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value != wanted.strip():
            return False
    return True


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "message": message, "code": code}


@contextmanager
def running(**kwargs: Any) -> Iterator[FakeApiServer]:
    server = FakeApiServer(**kwargs).start()
    try:
        yield server
    finally:
        server.stop()


def main() -> None:
    """Serve the double in its own process (so it does not share the caller's GIL); print its URL."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    args = parser.parse_args()
    server = FakeApiServer(latency=args.latency).start()
    print(server.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
