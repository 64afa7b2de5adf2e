"""The parity panel's charts: top-1 agreement and the max-abs-error p99 over time, per shadow pair.

Reads what ``GET /api/v1/models/{model}/parity/series`` serves
(``control_plane.parity.service.series``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup

from control_plane.parity import service as parity_service
from web.charts import Line, timeseries

log = logging.getLogger(__name__)

WINDOW, STEP = 1800, 30  # half an hour, 60 points
# The error chart is logarithmic (fp16 differs around 1e-4, a broken int8 around 1e-1): decades from 1e-8 to 1,
# an error of 0 drawn at the bottom.
_DECADES = 8


@dataclass
class ParityCharts:
    charts: list[tuple[str, Markup]] = field(default_factory=list)
    legend: list[tuple[str, str, bool]] = field(default_factory=list)  # (label, color, dashed)


def _decades(value: float | None) -> float | None:
    if value is None or math.isinf(value):
        return None
    return max(0.0, math.log10(value) + _DECADES) if value > 0 else 0.0


def _decade_text(tick: float) -> str:
    exponent = round(tick) - _DECADES
    return "0" if tick == 0 else "1" if exponent == 0 else f"1e{exponent}"


async def load(app_state: Any, *, model: str, colors: Mapping[str, str]) -> ParityCharts:
    """The charts, or none when nothing was compared in the last half hour or the store cannot answer."""
    store = getattr(app_state, "parity_store", None)
    if store is None:
        return ParityCharts()
    now = time.time()
    try:
        series = await parity_service.series(store, model=model, since=now - WINDOW, until=now, step=STEP)
    except Exception:  # noqa: BLE001 - e.g. Redis is down; the page renders without the charts
        log.exception("parity series of %s unavailable", model)
        return ParityCharts()
    if not any(any(line.compared) for line in series.lines):
        return ParityCharts()
    agreement: list[Line] = []
    errors: list[Line] = []
    legend: list[tuple[str, str, bool]] = []
    seen_primary: set[str] = set()
    for line in series.lines:
        # a colour per primary version, as in the live figures; a second architecture or output is dashed
        dashed = line.primary_version in seen_primary
        seen_primary.add(line.primary_version)
        color = colors.get(line.primary_version, "#57606a")
        label = (f"{line.shadow_version} vs {line.primary_version} · {line.shadow_gpu_arch or '–'} · "
                 f"{line.output}")
        legend.append((label, color, dashed))
        agreement.append(Line(label, color, [None if a is None else 100 * a for a in line.top1_agreement], dashed))
        errors.append(Line(label, color, [_decades(v) for v in line.max_abs_p99], dashed))
    return ParityCharts(charts=[
        ("Top-1 agreement with the primary", timeseries(
            agreement, series.timestamps, title="top-1 agreement over time", fmt=lambda v: f"{v:g}%", width=300, height=140)),
        ("Max abs error, p99 of requests (log)", timeseries(
            errors, series.timestamps, title="p99 of per-request max abs error over time", fmt=_decade_text,
            ticks=[float(d) for d in range(0, _DECADES + 1, 2)], width=300, height=140)),
    ], legend=legend)
