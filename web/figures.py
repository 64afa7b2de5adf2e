"""The live-figures panel: per-version requests/s, error rate and latency next to the default version's.

Reads the stats the routers report through ``control_plane.stats.service``
(the same numbers ``GET /api/v1/models/{model}/stats`` serves) and shapes them
into cards with small SVG charts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup

from web.charts import Bar, bars, sparkline

log = logging.getLogger(__name__)

WINDOW_SECONDS = 60
TREND_SLOTS, TREND_SLOT_SECONDS = 10, 30  # the sparklines cover the last five minutes


@dataclass
class Delta:
    version: str
    text: str
    tone: str  # "better" | "worse" | "same" | "neutral"


@dataclass
class Card:
    title: str
    chart: Markup
    trend: Markup
    deltas: list[Delta] = field(default_factory=list)


@dataclass
class Figures:
    state: str  # "ok" | "empty" | "missing" | "unavailable"
    routers: int = 0
    window: int = WINDOW_SECONDS
    cards: list[Card] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class _Metric:
    title: str
    value: Callable[[Any], float | None]
    text: Callable[[float | None], str]
    delta: Callable[[float, float], tuple[str, float]]  # (text, signed change: > 0 means higher)
    higher_is_worse: bool | None  # None: neither (traffic volume follows the split)


def _ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"


def _relative(new: float, base: float) -> tuple[str, float]:
    if base == 0:
        return ("n/a", 0.0) if new == 0 else ("new", 1.0)
    change = (new - base) / base
    return f"{change:+.0%}", change


def _points(new: float, base: float) -> tuple[str, float]:
    change = (new - base) * 100
    return f"{change:+.2f} pp", change


_METRICS = (
    _Metric("Requests/s", lambda v: v.requests_per_second,
            lambda x: "–" if x is None else f"{x:.1f}", _relative, None),
    _Metric("Error rate", lambda v: v.error_rate if v.requests else None,
            lambda x: "–" if x is None else f"{x * 100:.2f}%", _points, True),
    _Metric("Latency p50", lambda v: v.p50_ms, _ms, _relative, True),
    _Metric("Latency p99", lambda v: v.p99_ms, _ms, _relative, True),
)


def _tone(change: float, higher_is_worse: bool | None) -> str:
    if higher_is_worse is None:
        return "neutral"
    if abs(change) < 0.05 and higher_is_worse is not None:
        return "same"
    return "worse" if (change > 0) == higher_is_worse else "better"


def _trend_series(stats_service: Any, entries: list[dict[str, Any]], *, model: str,
                  now: float) -> list[dict[str, Any]]:
    """Per slot (oldest first), per version, the metric values, merged the way the API merges."""
    slots: list[dict[str, Any]] = []
    for i in range(TREND_SLOTS):
        end = now - (TREND_SLOTS - 1 - i) * TREND_SLOT_SECONDS
        inside = [e for e in entries if end - TREND_SLOT_SECONDS < e["window_end"] <= end]
        merged = stats_service.merge(inside, model=model, window=TREND_SLOT_SECONDS) if inside else None
        slots.append({v.version: v for v in merged.versions} if merged else {})
    return slots


async def load(app_state: Any, *, model: str, default_version: str | None, versions: Sequence[str],
               colors: dict[str, str]) -> Figures:
    """The panel's content; never raises, because the page must render without its figures."""
    try:
        from control_plane.stats import service as stats_service
    except ModuleNotFoundError:
        return Figures("missing")
    try:
        return await _load(stats_service, app_state, model=model, default_version=default_version,
                           versions=versions, colors=colors)
    except Exception:  # noqa: BLE001 - e.g. the stats store is down
        log.exception("live figures of %s unavailable", model)
        return Figures("unavailable")


async def _load(stats_service: Any, app_state: Any, *, model: str, default_version: str | None,
                versions: Sequence[str], colors: dict[str, str]) -> Figures:
    store = getattr(app_state, "stats_store", None)
    if store is None:
        return Figures("missing")
    now = time.time()
    stats = await stats_service.get(store, model=model, window=WINDOW_SECONDS, now=now)
    entries = await store.since(model, now - TREND_SLOTS * TREND_SLOT_SECONDS)
    by_version = {v.version: v for v in stats.versions}
    if not by_version:
        return Figures("empty", routers=stats.routers)
    shown = [v for v in versions if v in by_version] + [v for v in by_version if v not in versions]
    slots = _trend_series(stats_service, entries, model=model, now=now)
    base = by_version.get(default_version or "")
    total_requests = sum(v.requests for v in stats.versions) or 1
    figures = Figures("ok", routers=stats.routers)
    for metric in _METRICS:
        chart = bars([Bar(v, metric.value(by_version[v]), metric.text(metric.value(by_version[v])),
                          colors.get(v, "#57606a")) for v in shown], title=metric.title)
        trend = sparkline([(v, colors.get(v, "#57606a"),
                            [metric.value(slot[v]) if v in slot else None for slot in slots]) for v in shown],
                          title=f"{metric.title}, last {TREND_SLOTS * TREND_SLOT_SECONDS // 60} minutes")
        card = Card(metric.title, chart, trend)
        base_value = metric.value(base) if base is not None else None
        for v in shown:
            if v == default_version:
                continue
            value = metric.value(by_version[v])
            if value is None or base_value is None:
                card.deltas.append(Delta(v, "no comparison", "neutral"))
                continue
            text, change = metric.delta(value, base_value)
            if metric.higher_is_worse is None:  # volume follows the split: say which share it got
                text += f" vs {default_version} · {by_version[v].requests / total_requests:.1%} of requests"
            else:
                text += f" vs {default_version}"
            card.deltas.append(Delta(v, text, _tone(change, metric.higher_is_worse)))
        figures.cards.append(card)
    for v in shown:
        s = by_version[v]
        figures.rows.append({"version": v, "requests": s.requests, "errors": s.errors, "fallbacks": s.fallbacks})
    return figures
