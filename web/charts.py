"""Small server-side SVG charts for the live figures (no chart library, nothing fetched by the browser)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    value: float | None  # None: no figure (drawn as a dash)
    text: str  # the value as the page shows it
    color: str


def bars(items: Sequence[Bar], *, title: str, width: int = 260, label_w: int = 44) -> Markup:
    """One horizontal bar per item (a version, or a version and a source), scaled to the largest value."""
    row, text_w = 20, 78
    track = width - label_w - text_w
    top = max((b.value for b in items if b.value is not None), default=0.0) or 1.0
    parts = [f'<svg class="chart" role="img" width="{width}" height="{row * len(items) + 4}" '
             f'viewBox="0 0 {width} {row * len(items) + 4}" xmlns="http://www.w3.org/2000/svg">'
             f"<title>{escape(title)}</title>"]
    for i, bar in enumerate(items):
        y = 2 + i * row
        parts.append(f'<text x="0" y="{y + 14}" class="chart-label">{escape(bar.label)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{track}" height="12" rx="2" class="chart-track"/>')
        if bar.value is not None and bar.value > 0:
            length = max(2.0, track * bar.value / top)
            parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{length:.1f}" height="12" rx="2" '
                         f'fill="{escape(bar.color)}"/>')
        parts.append(f'<text x="{width}" y="{y + 14}" text-anchor="end" class="chart-value">{escape(bar.text)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def sparkline(series: Sequence[tuple[str, str, Sequence[float | None]]], *, title: str, width: int = 260,
              height: int = 44) -> Markup:
    """Lines over time, one per (label, color, points); gaps where a point is None."""
    points_n = max((len(p) for _, _, p in series), default=0)
    values = [v for _, _, p in series for v in p if v is not None]
    if points_n < 2 or not values:
        return Markup("")
    top = max(values) or 1.0
    step = (width - 4) / (points_n - 1)
    parts = [f'<svg class="chart spark" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
             f'<line x1="0" y1="{height - 1}" x2="{width}" y2="{height - 1}" class="chart-axis"/>']
    for _label, color, points in series:
        path: list[str] = []
        pen_down = False
        for i, value in enumerate(points):
            if value is None:
                pen_down = False
                continue
            x = 2 + i * step
            y = height - 3 - (height - 8) * value / top
            path.append(f"{'L' if pen_down else 'M'}{x:.1f},{y:.1f}")
            pen_down = True
        if path:
            parts.append(f'<path d="{" ".join(path)}" fill="none" stroke="{escape(color)}" stroke-width="1.6"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


@dataclass(frozen=True, slots=True)
class Line:
    label: str
    color: str
    points: Sequence[float | None]  # one per timestamp; None: no figure there (a gap in the line)
    dashed: bool = False


def _ticks(top: float) -> list[float]:
    """Three or four round values from 0 to at least ``top``."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / 3
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [step * i for i in range(int(math.ceil(top / step - 1e-9)) + 1)]


def timeseries(lines: Sequence[Line], timestamps: Sequence[float], *, title: str,
               fmt: Callable[[float], str], width: int = 560, height: int = 170,
               ticks: Sequence[float] | None = None) -> Markup:
    """Lines over time with a value axis (round ticks, or ``ticks`` from 0 up) and a UTC time axis; gaps where
    a point is None."""
    left, right, top_pad, bottom = 56, 10, 8, 22
    plot_w, plot_h = width - left - right, height - top_pad - bottom
    values = [v for line in lines for v in line.points if v is not None]
    ticks = list(ticks) if ticks else _ticks(max(values, default=0.0))
    top = ticks[-1] or 1.0
    n = len(timestamps)
    parts = [f'<svg class="chart series" role="img" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>']
    for tick in ticks:
        y = top_pad + plot_h * (1 - tick / top)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" class="chart-grid"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="chart-tick">'
                     f"{escape(fmt(tick))}</text>")
    parts.append(f'<line x1="{left}" y1="{top_pad + plot_h}" x2="{width - right}" y2="{top_pad + plot_h}" '
                 f'class="chart-axis"/>')
    if n:
        step = plot_w / max(1, n - 1)
        for i in sorted({0, n // 3, 2 * n // 3, n - 1}):
            x = left + i * step
            label = time.strftime("%H:%M", time.gmtime(timestamps[i]))
            anchor = "start" if i == 0 else "end" if i == n - 1 else "middle"
            parts.append(f'<text x="{x:.1f}" y="{height - 6}" text-anchor="{anchor}" class="chart-tick">{label}'
                         f"{' UTC' if i == n - 1 else ''}</text>")
        for line in lines:
            path: list[str] = []
            pen_down = False
            for i, value in enumerate(line.points):
                if value is None:
                    pen_down = False
                    continue
                x = left + i * step
                y = top_pad + plot_h * (1 - value / top)
                path.append(f"{'L' if pen_down else 'M'}{x:.1f},{y:.1f}")
                pen_down = True
            if path:
                dash = ' stroke-dasharray="5 3"' if line.dashed else ""
                parts.append(f'<path d="{" ".join(path)}" fill="none" stroke="{escape(line.color)}" '
                             f'stroke-width="1.8"{dash}><title>{escape(line.label)}</title></path>')
    parts.append("</svg>")
    return Markup("".join(parts))
