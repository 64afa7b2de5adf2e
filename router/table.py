"""The routing table compiled from one snapshot, and the backends it shares with the next.

A table is immutable once built except for readiness: ejecting or readmitting
a backend recomputes which versions are ready. Backends outlive tables (kept
by URL in ``Backends``) so their connection pools and health survive a
snapshot swap.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from router.routing import ModelRouting
from router.snapshot import Snapshot
from router.upstream import Backend


class VersionGroup:
    """The backends of one version; picks the less loaded of two random live ones."""

    __slots__ = ("backends", "live", "version", "where")

    def __init__(self, version: str, backends: Sequence[Backend],
                 where: Sequence[tuple[str, str]] = ()) -> None:
        self.version = version
        self.backends = tuple(backends)
        self.live: list[Backend] = [b for b in backends if not b.ejected]
        # each backend's (pool, gpu_arch) from the snapshot: the labels its requests are counted under
        self.where: dict[Backend, tuple[str, str]] = dict(zip(self.backends, where or [("", "")] * len(backends)))

    def refresh(self) -> None:
        self.live = [b for b in self.backends if not b.ejected]

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
    __slots__ = ("groups", "name", "name_bytes", "ready", "routing", "wanted")

    def __init__(self, name: str, routing: ModelRouting, groups: dict[str, VersionGroup]) -> None:
        self.name = name
        self.routing = routing
        self.groups = groups
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

    def __init__(self, *, connect_timeout: float, max_response: int = 256 * 1024 * 1024) -> None:
        self.by_url: dict[str, Backend] = {}
        self.connect_timeout = connect_timeout
        self.max_response = max_response
        self.current: RoutingTable | None = None

    def _changed(self) -> None:
        if self.current is not None:
            self.current.refresh()

    def build(self, snapshot: Snapshot, raw: bytes) -> RoutingTable:
        """Compile a validated snapshot; raises ``ValueError`` on an unusable endpoint."""
        models: dict[str, ModelTable] = {}
        for name, spec in snapshot.models.items():
            groups: dict[str, VersionGroup] = {}
            for version, routes in spec.versions.items():
                backends = []
                where = []
                for endpoint in routes.endpoints:
                    backend = self.by_url.get(endpoint.url)
                    if backend is None:
                        backend = Backend(endpoint.url, connect_timeout=self.connect_timeout,
                                          max_response=self.max_response)
                        self.by_url[endpoint.url] = backend
                    backends.append(backend)
                    where.append((endpoint.pool, endpoint.gpu_arch))
                groups[version] = VersionGroup(version, backends, where)
            models[name] = ModelTable(name, spec.routing(name), groups)
        return RoutingTable(snapshot.revision, models, raw)

    def activate(self, table: RoutingTable) -> None:
        """Make ``table`` current and drop backends no longer listed anywhere."""
        self.current = table
        listed = {b.url for m in table.models.values() for g in m.groups.values() for b in g.backends}
        for url in list(self.by_url):
            backend = self.by_url[url]
            if url in listed:
                backend.on_change = self._changed
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
