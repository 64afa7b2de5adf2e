"""The routing table compiled from one snapshot, and the backends it shares with the next.

A table is immutable once built except for readiness: ejecting or readmitting
a backend recomputes which versions are ready. Backends outlive tables (kept
by URL in ``Backends``) so their connection pools and health survive a
snapshot swap.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from router.errors import ConnectRefused, UpstreamError
from router.routing import ModelRouting
from router.shadow import ShadowTarget
from router.snapshot import Snapshot
from router.upstream import Backend, Health


class VersionGroup:
    """The backends of one version; picks the less loaded of two random live ones.

    ``live`` is the healthy backends; when none is healthy but some are only
    ejected (not down), it is those, and the group is in *panic*: sending to a
    backend judged unwell beats answering 503 for a version that still has
    processes. Backends that refuse connections are never live: when all of a
    version's backends are down it is not ready, and routing falls back.
    """

    __slots__ = ("backends", "live", "max_ejected", "panic", "version", "where")

    def __init__(self, version: str, backends: Sequence[Backend], where: Sequence[tuple[str, str]] = (), *,
                 max_ejected_share: float = 0.5) -> None:
        self.version = version
        self.backends = tuple(backends)
        # each backend's (pool, gpu_arch) from the snapshot: the labels its requests are counted under
        self.where: dict[Backend, tuple[str, str]] = dict(zip(self.backends, where or [("", "")] * len(backends)))
        # at most this many ejected at once; never all (the last healthy one stays in)
        self.max_ejected = int(max_ejected_share * len(self.backends))
        self.live: list[Backend] = []
        self.panic = False
        self.refresh()

    def refresh(self) -> None:
        healthy = [b for b in self.backends if b.health is Health.HEALTHY]
        if healthy:
            self.live, self.panic = healthy, False
        else:
            self.live = [b for b in self.backends if b.health is Health.EJECTED]
            self.panic = bool(self.live)

    def failed(self, backend: Backend, exc: UpstreamError, *, eject_after: int) -> None:
        """Count a failed exchange with ``backend``: down at once if it refused, ejected after a streak."""
        if isinstance(exc, ConnectRefused):
            backend.mark_down()
            return
        backend.failures += 1
        if backend.failures < eject_after or backend.health is not Health.HEALTHY:
            return
        ejected = sum(1 for b in self.backends if b.health is Health.EJECTED)
        healthy = sum(1 for b in self.backends if b.health is Health.HEALTHY)
        if ejected >= self.max_ejected or healthy <= 1:
            backend.failures = 0  # a fresh streak before asking again
            backend.event("ejection_capped")
            return
        backend.eject()

    def pick(self, tried: Sequence[Backend] = ()) -> Backend | None:
        live = self.live
        if tried:
            live = [b for b in live if b not in tried]
        n = len(live)
        if n <= 1:
            return live[0] if n else None
        # power of two choices on outstanding requests
        i = int(random.random() * n)
        j = int(random.random() * (n - 1))
        if j >= i:
            j += 1
        a, b = live[i], live[j]
        return a if a.outstanding <= b.outstanding else b


class ModelTable:
    __slots__ = ("arch", "groups", "name", "name_bytes", "ready", "routing", "shadow", "wanted")

    def __init__(self, name: str, routing: ModelRouting, groups: dict[str, VersionGroup],
                 shadow: ShadowTarget | None = None, arch: dict[str, str] | None = None) -> None:
        self.name = name
        self.routing = routing
        self.groups = groups
        self.shadow = shadow  # None: nothing is mirrored, and the hot path does no shadow work
        self.arch = arch or {}  # backend URL -> gpu_arch, to label parity figures
        self.ready: frozenset[str] = frozenset()
        # the only request headers the decision reads; nothing else gets decoded
        self.wanted = frozenset(
            [routing.key_header.encode("latin-1")]
            + [r.header.encode("latin-1") for r in routing.rules if r.header is not None]
        )
        self.refresh()

    def refresh(self) -> None:
        for group in self.groups.values():
            group.refresh()
        self.ready = frozenset(v for v, g in self.groups.items() if g.live)


class RoutingTable:
    __slots__ = ("models", "raw", "revision")

    def __init__(self, revision: int, models: dict[str, ModelTable], raw: bytes) -> None:
        self.revision = revision
        self.models = models
        self.raw = raw  # the validated document, persisted as the last good snapshot

    def refresh(self) -> None:
        for model in self.models.values():
            model.refresh()


class Backends:
    """Every backend known to this process, by URL; builds tables that share them."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        max_response: int = 256 * 1024 * 1024,
        max_connections: int = 64,
        max_pending: int = 256,
        queue_timeout: float = 1.0,
        max_ejected_share: float = 0.5,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.by_url: dict[str, Backend] = {}
        self.connect_timeout = connect_timeout
        self.max_response = max_response
        self.max_connections = max_connections
        self.max_pending = max_pending
        self.queue_timeout = queue_timeout
        self.max_ejected_share = max_ejected_share
        self.on_event = on_event
        self.current: RoutingTable | None = None

    def census(self) -> dict[str, int]:
        """Backends by health, open connections and requests queued for one, for the metrics."""
        counts = {health.value: 0 for health in Health}
        connections = waiting = 0
        for backend in self.by_url.values():
            counts[backend.health.value] += 1
            connections += backend.open
            waiting += len(backend.waiters)
        return {**counts, "connections": connections, "waiting": waiting}

    def _changed(self) -> None:
        if self.current is not None:
            self.current.refresh()

    def build(self, snapshot: Snapshot, raw: bytes) -> RoutingTable:
        """Compile a validated snapshot; raises ``ValueError`` on an unusable endpoint."""
        models: dict[str, ModelTable] = {}
        for name, spec in snapshot.models.items():
            groups: dict[str, VersionGroup] = {}
            arch: dict[str, str] = {}
            for version, routes in spec.versions.items():
                backends = []
                where = []
                for endpoint in routes.endpoints:
                    arch[endpoint.url] = endpoint.gpu_arch
                    backend = self.by_url.get(endpoint.url)
                    if backend is None:
                        backend = Backend(endpoint.url, connect_timeout=self.connect_timeout,
                                          max_response=self.max_response, max_connections=self.max_connections,
                                          max_pending=self.max_pending, queue_timeout=self.queue_timeout)
                        self.by_url[endpoint.url] = backend
                    backends.append(backend)
                    where.append((endpoint.pool, endpoint.gpu_arch))
                groups[version] = VersionGroup(version, backends, where, max_ejected_share=self.max_ejected_share)
            shadow = ShadowTarget(spec.salt, spec.shadow.version, spec.shadow.percent) if spec.shadow else None
            models[name] = ModelTable(name, spec.routing(name), groups, shadow, arch)
        return RoutingTable(snapshot.revision, models, raw)

    def activate(self, table: RoutingTable) -> None:
        """Make ``table`` current and drop backends no longer listed anywhere."""
        self.current = table
        listed = {b.url for m in table.models.values() for g in m.groups.values() for b in g.backends}
        for url in list(self.by_url):
            backend = self.by_url[url]
            if url in listed:
                backend.on_change = self._changed
                backend.on_event = self.on_event
            else:
                backend.close()
                del self.by_url[url]
        table.refresh()

    def close(self) -> None:
        for backend in self.by_url.values():
            backend.close()
        self.by_url.clear()


def jitter(seconds: float) -> float:
    """``seconds`` ±10%, so many routers do not act in lockstep."""
    return seconds * (0.9 + 0.2 * random.random())
