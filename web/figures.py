"""The live-figures panel: per assigned version, per (version, pool, gpu_arch), over a chosen window.

Reads what ``GET /api/v1/models/{model}/stats`` and ``/stats/series`` serve
(``control_plane.stats.service``) and shapes it for people deciding whether a
canary is healthy: every figure carries its count; a version is compared with
the default only when both have enough requests, and then with the 95%
interval of the difference, never a bare percentage; request share is shown
next to the share of users the split gives.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup

from web.charts import Line, timeseries

log = logging.getLogger(__name__)

# (seconds, label, step seconds): about 30-60 points per chart
WINDOWS: tuple[tuple[int, str, int], ...] = ((300, "5 min", 10), (3600, "1 h", 60), (6 * 3600, "6 h", 360))
DEFAULT_WINDOW = 300
ENOUGH = 200  # requests on each side before a comparison is drawn (the rollout analysis' default too)


@dataclass
class Comparison:
    text: str
    tone: str  # "better" | "worse" | "same" | "neutral"


@dataclass
class Row:
    version: str
    color: str
    is_default: bool
    requests: int
    share_of_requests: float
    share_of_users: float | None  # the split's weight, None when the version is not in the split
    errors: int
    error_rate: float
    error_interval: tuple[float, float]
    error_kinds: str
    fallbacks: int
    served_by: str
    p50_ms: float | None
    p99_ms: float | None
    p99_interval: tuple[float, float] | None
    error_comparison: Comparison
    latency_comparison: Comparison


@dataclass
class Figures:
    state: str  # "ok" | "empty" | "missing" | "unavailable"
    routers: int = 0
    window: int = DEFAULT_WINDOW
    window_label: str = "5 min"
    windows: Sequence[tuple[int, str, int]] = WINDOWS
    rows: list[Row] = field(default_factory=list)
    charts: list[tuple[str, Markup]] = field(default_factory=list)
    deployments: list[dict[str, Any]] = field(default_factory=list)
    enough: int = ENOUGH


def window_of(seconds: int | str | None) -> int:
    """One of the offered windows (the default for anything else)."""
    try:
        wanted = int(seconds or DEFAULT_WINDOW)
    except ValueError:
        return DEFAULT_WINDOW
    return wanted if wanted in {w for w, _, _ in WINDOWS} else DEFAULT_WINDOW


def _error_comparison(stats_service: Any, v: Any, base: Any | None, default: str | None) -> Comparison:
    if base is None:
        return Comparison("no default version to compare with", "neutral")
    if v.requests < ENOUGH:
        return Comparison(f"not enough data, {v.requests} requests", "neutral")
    if base.requests < ENOUGH:
        return Comparison(f"not enough data: {default} has {base.requests} requests", "neutral")
    d, low, high = stats_service.rate_difference(v.errors, v.requests, base.errors, base.requests)
    text = f"{d * 100:+.2f} pp vs {default} (95% CI {low * 100:+.2f} to {high * 100:+.2f})"
    if low > 0:
        return Comparison(text, "worse")
    if high < 0:
        return Comparison(text, "better")
    return Comparison(text + ": no clear difference", "same")


def _latency_comparison(v: Any, base: Any | None, default: str | None, mine: tuple[float, float] | None,
                        theirs: tuple[float, float] | None) -> Comparison:
    if base is None or v.p99_ms is None or base.p99_ms is None or mine is None or theirs is None:
        return Comparison("–", "neutral")
    if v.requests < ENOUGH or base.requests < ENOUGH:
        return Comparison(f"not enough data, {min(v.requests, base.requests)} requests", "neutral")
    text = f"p99 {v.p99_ms / base.p99_ms:.2f}× {default}'s"
    if mine[0] > theirs[1]:
        return Comparison(text, "worse")
    if mine[1] < theirs[0]:
        return Comparison(text, "better")
    return Comparison(text + ", intervals overlap", "same")


def _per_second(counts: Sequence[int], step: int) -> list[float | None]:
    return [c / step for c in counts]


async def load(app_state: Any, *, model: str, default_version: str | None, versions: Sequence[str],
               colors: dict[str, str], window: int = DEFAULT_WINDOW,
               weights: Mapping[str, float] | None = None) -> Figures:
    """The panel's content; never raises, because the page must render without its figures."""
    try:
        from control_plane.stats import service as stats_service
    except ModuleNotFoundError:
        return Figures("missing")
    try:
        return await _load(stats_service, app_state, model=model, default_version=default_version,
                           versions=versions, colors=colors, window=window_of(window), weights=weights or {})
    except Exception:  # noqa: BLE001 - e.g. the stats store is down
        log.exception("live figures of %s unavailable", model)
        return Figures("unavailable", window=window_of(window))


async def _load(stats_service: Any, app_state: Any, *, model: str, default_version: str | None,
                versions: Sequence[str], colors: dict[str, str], window: int,
                weights: Mapping[str, float]) -> Figures:
    label, step = next((lbl, st) for w, lbl, st in WINDOWS if w == window)
    store = getattr(app_state, "stats_store", None)
    if store is None:
        return Figures("missing", window=window, window_label=label)
    window = min(window, store.retention)
    now = time.time()
    stats = await stats_service.get(store, model=model, window=window, now=now)
    by_version = {v.version: v for v in stats.versions}
    if not by_version:
        return Figures("empty", routers=stats.routers, window=window, window_label=label)
    shown = [v for v in versions if v in by_version] + [v for v in by_version if v not in versions]
    base = by_version.get(default_version or "")
    base_p99 = stats_service.quantile_interval(base.buckets, 0.99) if base is not None else None
    figures = Figures("ok", routers=stats.routers, window=window, window_label=label)
    for name in shown:
        v = by_version[name]
        p99_interval = stats_service.quantile_interval(v.buckets, 0.99)
        served = [f"{s.version} on {s.pool or '?'}/{s.gpu_arch or '?'} {s.requests}" for s in v.served_by]
        figures.rows.append(Row(
            version=name, color=colors.get(name, "#57606a"), is_default=name == default_version,
            requests=v.requests, share_of_requests=v.share_of_requests,
            share_of_users=weights.get(name), errors=v.errors, error_rate=v.error_rate,
            error_interval=stats_service.wilson(v.errors, v.requests),
            error_kinds=", ".join(f"{k} {n}" for k, n in v.error_kinds.items()),
            fallbacks=v.fallbacks, served_by=" · ".join(served), p50_ms=v.p50_ms, p99_ms=v.p99_ms,
            p99_interval=p99_interval,
            error_comparison=(Comparison("baseline", "neutral") if name == default_version
                              else _error_comparison(stats_service, v, base, default_version)),
            latency_comparison=(Comparison("baseline", "neutral") if name == default_version
                                else _latency_comparison(v, base, default_version, p99_interval, base_p99)),
        ))
    for d in stats.deployments:
        low, high = stats_service.wilson(d.errors, d.requests)
        figures.deployments.append({
            "version": d.version, "pool": d.pool or "?", "gpu_arch": d.gpu_arch or "?", "requests": d.requests,
            "errors": d.errors, "error_rate": d.error_rate, "error_interval": (low, high),
            "p50_ms": d.p50_ms, "p99_ms": d.p99_ms, "color": colors.get(d.version, "#57606a"),
        })

    # whole steps only: a step still filling would draw as a drop in traffic
    until = now // step * step
    series = await stats_service.series(store, model=model, since=until - window, until=until, step=step)
    lines = {line.version: line for line in series.versions}
    order = [v for v in shown if v in lines]

    def chart(title: str, values: Any, fmt: Any) -> None:
        figures.charts.append((title, timeseries(
            [Line(v, colors.get(v, "#57606a"), values(lines[v])) for v in order], series.timestamps,
            title=title, fmt=fmt)))

    chart("Requests/s per assigned version", lambda line: _per_second(line.requests, step),
          lambda x: f"{x:g}")
    chart("Error rate per assigned version", lambda line: line.error_rate, lambda x: f"{x * 100:g}%")
    chart("Latency p99 per assigned version", lambda line: line.p99_ms, lambda x: f"{x:g} ms")
    pools = sorted({(d.pool, d.gpu_arch) for d in series.deployments})
    figures.charts.append(("Latency p99 per version, pool and GPU architecture", timeseries(
        [Line(f"{d.version} on {d.pool or '?'}/{d.gpu_arch or '?'}", colors.get(d.version, "#57606a"), d.p99_ms,
              dashed=pools.index((d.pool, d.gpu_arch)) % 2 == 1) for d in series.deployments],
        series.timestamps, title="Latency p99 per version, pool and GPU architecture", fmt=lambda x: f"{x:g} ms")))
    return figures
