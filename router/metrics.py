"""Request accounting: one cheap record per request, rendered for Prometheus on scrape.

``prometheus_client`` label lookups and locks cost more per request than the
routing decision (measured, README), so the hot path only bumps plain dict
entries; a custom collector turns them into metric families when ``/metrics``
is scraped. With several worker processes each one dumps its totals to a
shared directory every second and the scraped worker merges them: counters
stay correct across workers, at most a second stale for the others.
"""

from __future__ import annotations

import json
import os
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from router.stats import ERROR_KINDS, HTTP_5XX, LATENCY_BOUNDS_S, VersionWindow

Dump = dict[str, Any]
# (model, assigned version, served version, pool, gpu_arch)
Cell = tuple[str, str, str, str, str]
# A backend's (pool, gpu_arch), from the snapshot; nobody served: ("", "")
Where = tuple[str, str]
NOWHERE: Where = ("", "")


class Recorder:
    """Counters of one process, plus the current stats window."""

    def __init__(self) -> None:
        # (model, served version, pool, gpu_arch, route, status)
        self.requests: dict[tuple[str, str, str, str, str, int], int] = {}
        self.upstream_errors: dict[tuple[str, str, str, str, str], int] = {}
        self.fallbacks: dict[tuple[str, str, str], int] = {}
        self.latency: dict[Cell, VersionWindow] = {}  # totals of closed windows
        self.window: dict[Cell, VersionWindow] = {}
        self.window_start = time.time()
        self.revision = -1
        self.defaults: dict[str, str] = {}  # model -> default version, from the snapshot being served
        # overload: what the router did instead of failing a request, and what it gave up on
        self.retries: dict[tuple[str, str, str], int] = {}  # (model, version that failed, kind)
        self.retries_denied: dict[tuple[str, str], int] = {}
        self.shed: dict[tuple[str, str, str], int] = {}  # (model, version, reason)
        self.panic: dict[tuple[str, str], int] = {}
        self.backend_events: dict[str, int] = {}
        self.reports_dropped = 0
        self.reports_spooled = 0
        self.census: Callable[[], dict[str, int]] | None = None  # backends by health, connections

    def observe(
        self, model: str, assigned: str, version: str, where: Where, route: str, status: int, seconds: float,
        kind: str | None = None,
    ) -> None:
        """A request assigned to ``assigned`` and answered by ``version`` on a backend at ``where``.

        ``kind`` names the failure when the router answered an error itself
        (``ERROR_KINDS``); a 5xx from the backend is ``http_5xx``.
        """
        pool, arch = where
        key = (model, version, pool, arch, route, status)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        ckey = (model, assigned, version, pool, arch)
        cell = self.window.get(ckey)
        if cell is None:
            cell = self.window[ckey] = VersionWindow()
        cell.requests += 1
        if status >= 500 or kind is not None:
            cell.errors += 1
            kind = kind or HTTP_5XX
            cell.kinds[kind] = cell.kinds.get(kind, 0) + 1
        cell.latency_sum += seconds
        cell.buckets[bisect_left(LATENCY_BOUNDS_S, seconds)] += 1
        if version != assigned and version:  # a fallback away from the assigned version
            cell.fallbacks += 1
            fkey = (model, assigned, version)
            self.fallbacks[fkey] = self.fallbacks.get(fkey, 0) + 1

    def unserved(self, model: str, assigned: str, route: str, seconds: float, kind: str) -> None:
        """A request assigned to a version that no backend answered (``kind`` says why).

        Counted in the assigned version's window only; the caller's error answer
        is counted by ``refused``.
        """
        ckey = (model, assigned, "", "", "")
        cell = self.window.get(ckey)
        if cell is None:
            cell = self.window[ckey] = VersionWindow()
        cell.requests += 1
        cell.errors += 1
        cell.kinds[kind] = cell.kinds.get(kind, 0) + 1
        cell.latency_sum += seconds
        cell.buckets[bisect_left(LATENCY_BOUNDS_S, seconds)] += 1

    def refused(self, model: str, status: int, route: str) -> None:
        """A request answered without any version (unknown model, 503, 404…)."""
        key = (model, "", "", "", route, status)
        self.requests[key] = self.requests.get(key, 0) + 1

    def upstream_error(self, model: str, version: str, where: Where, kind: str) -> None:
        key = (model, version, where[0], where[1], kind)
        self.upstream_errors[key] = self.upstream_errors.get(key, 0) + 1

    def retried(self, model: str, version: str, kind: str) -> None:
        key = (model, version, kind)
        self.retries[key] = self.retries.get(key, 0) + 1

    def retry_denied(self, model: str, version: str) -> None:
        key = (model, version)
        self.retries_denied[key] = self.retries_denied.get(key, 0) + 1

    def shed_load(self, model: str, version: str, reason: str) -> None:
        key = (model, version, reason)
        self.shed[key] = self.shed.get(key, 0) + 1

    def panicked(self, model: str, version: str) -> None:
        key = (model, version)
        self.panic[key] = self.panic.get(key, 0) + 1

    def backend_event(self, event: str) -> None:
        self.backend_events[event] = self.backend_events.get(event, 0) + 1

    def take_window(self) -> tuple[float, float, dict[Cell, VersionWindow]]:
        """Close the current window: (start, end, cells); its counts join the totals."""
        start, end = self.window_start, time.time()
        window, self.window, self.window_start = self.window, {}, end
        for key, cell in window.items():
            total = self.latency.get(key)
            if total is None:
                total = self.latency[key] = VersionWindow()
            total.add(cell)
        return start, end, window

    def dump(self) -> Dump:
        """Totals so far (closed windows and the open one) as JSON-able data."""
        cells: dict[Cell, VersionWindow] = {}
        for source in (self.latency, self.window):
            for key, cell in source.items():
                total = cells.get(key)
                if total is None:
                    total = cells[key] = VersionWindow()
                total.add(cell)
        return {
            "revision": self.revision,
            "requests": [[*k, v] for k, v in self.requests.items()],
            "upstream_errors": [[*k, v] for k, v in self.upstream_errors.items()],
            "fallbacks": [[*k, v] for k, v in self.fallbacks.items()],
            "cells": [[*k, c.requests, c.latency_sum, c.buckets, c.kinds] for k, c in cells.items()],
            "defaults": [[m, v] for m, v in self.defaults.items()],
            "retries": [[*k, v] for k, v in self.retries.items()],
            "retries_denied": [[*k, v] for k, v in self.retries_denied.items()],
            "shed": [[*k, v] for k, v in self.shed.items()],
            "panic": [[*k, v] for k, v in self.panic.items()],
            "backend_events": [[k, v] for k, v in self.backend_events.items()],
            "gauges": {
                "reports_dropped": self.reports_dropped,
                "reports_spooled": self.reports_spooled,
                **(self.census() if self.census is not None else {}),
            },
        }


def merge_dumps(dumps: list[Dump]) -> Dump:
    def summed(name: str, width: int) -> list[list[Any]]:
        totals: dict[tuple[Any, ...], int] = {}
        for dump in dumps:
            for row in dump.get(name, []):
                key = tuple(row[:width])
                totals[key] = totals.get(key, 0) + row[width]
        return [[*k, v] for k, v in totals.items()]

    cells: dict[tuple[str, ...], list[Any]] = {}
    for dump in dumps:
        for *key, count, total, buckets, kinds in dump.get("cells", []):
            cell = cells.get(tuple(key))
            if cell is None:
                cells[tuple(key)] = [*key, count, total, list(buckets), dict(kinds)]
            else:
                cell[5] += count
                cell[6] += total
                cell[7] = [a + b for a, b in zip(cell[7], buckets)]
                for kind, n in kinds.items():
                    cell[8][kind] = cell[8].get(kind, 0) + n
    gauges: dict[str, int] = {}
    for dump in dumps:
        for name, value in dump.get("gauges", {}).items():
            gauges[name] = gauges.get(name, 0) + value
    revisions = [d["revision"] for d in dumps if d.get("revision", -1) >= 0]
    return {
        # the lagging worker is the one an operator needs to see
        "revision": min(revisions) if revisions else -1,
        "requests": summed("requests", 6),
        "upstream_errors": summed("upstream_errors", 5),
        "fallbacks": summed("fallbacks", 3),
        "cells": list(cells.values()),
        "defaults": next((d["defaults"] for d in dumps if d.get("defaults")), []),
        "retries": summed("retries", 3),
        "retries_denied": summed("retries_denied", 2),
        "shed": summed("shed", 3),
        "panic": summed("panic", 2),
        "backend_events": summed("backend_events", 1),
        "gauges": gauges,
    }


def _outcomes(requests: int, kinds: dict[str, int], fallback: bool) -> Iterator[tuple[str, int]]:
    """A cell's requests by outcome: each error kind, then the rest as ``fallback`` or ``ok``."""
    failed = 0
    for kind in ERROR_KINDS:
        n = kinds.get(kind, 0)
        if n:
            failed += n
            yield kind, n
    if requests > failed:
        yield ("fallback" if fallback else "ok"), requests - failed


class _DumpCollector(Collector):
    def __init__(self, dump: Dump) -> None:
        self.data = dump

    def collect(self) -> Iterator[Any]:
        data = self.data
        requests = CounterMetricFamily(
            "grayroute_requests", "Requests answered, by model, serving version, its pool and GPU architecture, "
            "route and status",
            labels=["model", "version", "pool", "gpu_arch", "route", "status"],
        )
        for model, version, pool, arch, route, status, count in data["requests"]:
            requests.add_metric([model, version, pool, arch, route, str(status)], count)
        yield requests
        assigned = CounterMetricFamily(
            "grayroute_assigned_requests", "Requests by the version the user was assigned (split, rule or explicit), "
            "the version that served them (empty: none) and outcome (ok, fallback or an error kind)",
            labels=["model", "assigned_version", "version", "outcome"],
        )
        outcomes: dict[tuple[str, str, str, str], int] = {}
        for model, assigned_version, version, _pool, _arch, count, _total, _buckets, kinds in data["cells"]:
            for outcome, n in _outcomes(count, kinds, bool(version) and version != assigned_version):
                key = (model, assigned_version, version, outcome)
                outcomes[key] = outcomes.get(key, 0) + n
        for labels, n in outcomes.items():
            assigned.add_metric(list(labels), n)
        yield assigned
        errors = CounterMetricFamily(
            "grayroute_upstream_errors", "Failed exchanges with backends, by kind",
            labels=["model", "version", "pool", "gpu_arch", "kind"],
        )
        for model, version, pool, arch, kind, count in data["upstream_errors"]:
            errors.add_metric([model, version, pool, arch, kind], count)
        yield errors
        fallbacks = CounterMetricFamily(
            "grayroute_fallbacks", "Requests served by the default version because the chosen one had no backend",
            labels=["model", "chosen", "version"],
        )
        for model, chosen, version, count in data["fallbacks"]:
            fallbacks.add_metric([model, chosen, version], count)
        yield fallbacks
        latency = HistogramMetricFamily(
            "grayroute_request_duration_seconds",
            "Time from request received to response sent, by serving version, its pool and GPU architecture",
            labels=["model", "version", "pool", "gpu_arch"],
        )
        served: dict[tuple[str, str, str, str], list[Any]] = {}
        for model, _assigned, version, pool, arch, count, total, buckets, _kinds in data["cells"]:
            if not version:
                continue  # nobody served it: no backend latency to show
            cell = served.get((model, version, pool, arch))
            if cell is None:
                served[(model, version, pool, arch)] = [count, total, list(buckets)]
            else:
                cell[0] += count
                cell[1] += total
                cell[2] = [a + b for a, b in zip(cell[2], buckets)]
        for labels, (count, total, buckets) in served.items():
            cumulative, running = [], 0
            for bound, n in zip(LATENCY_BOUNDS_S, buckets):
                running += n
                cumulative.append((repr(bound), running))
            cumulative.append(("+Inf", count))
            latency.add_metric(list(labels), cumulative, total)
        yield latency
        defaults = GaugeMetricFamily(
            "grayroute_default_version", "1 for each model's default version in the snapshot being served "
            "(the baseline a canary is compared with)", labels=["model", "version"],
        )
        for model, version in data.get("defaults", []):
            defaults.add_metric([model, version], 1)
        yield defaults
        yield GaugeMetricFamily(
            "grayroute_config_revision", "Revision of the routing snapshot being served", value=data["revision"]
        )
        yield from _overload_families(data)


def _overload_families(data: Dump) -> Iterator[Any]:
    retries = CounterMetricFamily(
        "grayroute_retries", "Requests sent again after a failure that happened before anything reached the backend, "
        "by the version that failed and the kind of failure", labels=["model", "version", "kind"],
    )
    for model, version, kind, count in data.get("retries", []):
        retries.add_metric([model, version, kind], count)
    yield retries
    denied = CounterMetricFamily(
        "grayroute_retries_denied", "Retries not made because the retry budget was spent", labels=["model", "version"],
    )
    for model, version, count in data.get("retries_denied", []):
        denied.add_metric([model, version], count)
    yield denied
    shed = CounterMetricFamily(
        "grayroute_shed", "Requests answered 503 with Retry-After because the backend's connection queue was full "
        "(queue_full) or the wait for a connection ran out (queue_timeout)", labels=["model", "version", "reason"],
    )
    for model, version, reason, count in data.get("shed", []):
        shed.add_metric([model, version, reason], count)
    yield shed
    panic = CounterMetricFamily(
        "grayroute_panic_requests", "Requests sent to ejected backends because their version had no healthy one",
        labels=["model", "version"],
    )
    for model, version, count in data.get("panic", []):
        panic.add_metric([model, version], count)
    yield panic
    events = CounterMetricFamily(
        "grayroute_backend_events", "Backend health changes (down, ejected, ejection_capped, readmitted) "
        "and connect timeouts", labels=["event"],
    )
    for event, count in data.get("backend_events", []):
        events.add_metric([event], count)
    yield events
    gauges = data.get("gauges", {})
    backends = GaugeMetricFamily("grayroute_backends", "Backends by health", labels=["health"])
    for health in ("healthy", "ejected", "down"):
        backends.add_metric([health], gauges.get(health, 0))
    yield backends
    yield GaugeMetricFamily("grayroute_upstream_connections", "Open connections to backends",
                            value=gauges.get("connections", 0))
    yield GaugeMetricFamily("grayroute_upstream_waiting", "Requests waiting for a free backend connection",
                            value=gauges.get("waiting", 0))
    yield CounterMetricFamily("grayroute_stats_reports_dropped", "Stats reports dropped from a full spool "
                              "while neither Redis nor the control plane took them",
                              value=gauges.get("reports_dropped", 0))
    yield GaugeMetricFamily("grayroute_stats_reports_spooled", "Stats reports waiting for Redis or the control plane",
                            value=gauges.get("reports_spooled", 0))


def render(dump: Dump) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_DumpCollector(dump))
    return generate_latest(registry)


class SharedDirectory:
    """Where worker processes leave their totals for each other (one JSON file per pid)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.own = path / f"{os.getpid()}.json"

    def write(self, dump: Dump) -> None:
        tmp = self.own.with_suffix(".tmp")
        tmp.write_text(json.dumps(dump))
        os.replace(tmp, self.own)

    def others(self) -> list[Dump]:
        dumps = []
        for file in self.path.glob("*.json"):
            if file == self.own:
                continue
            try:
                dumps.append(json.loads(file.read_text()))
            except (OSError, ValueError):
                continue  # being replaced right now; next scrape gets it
        return dumps
