"""The version report page: what a candidate engine buys over the baseline, per GPU architecture, printable
one architecture per page, with CSV and JSON exports of the same figures."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from markupsafe import Markup

from control_plane.deps import SessionDep
from control_plane.registry import service as registry_service
from control_plane.registry.models import VersionStatus
from control_plane.reports import service as reports_service
from control_plane.reports.schemas import ArchitectureReport, Better, Figure, Metric, Source, VersionReport
from web.charts import Bar, bars
from web.views.pages import PALETTE, VisitorDep, _colors, _PageRoute, _reader, _render

router = APIRouter(prefix="/ui", route_class=_PageRoute, include_in_schema=False)

WINDOW = 300  # seconds of live figures, as the API's default
NO_DATA = "not enough data"


@dataclass
class FigureText:
    text: str
    source: str  # "trtexec · 1 run", "live · 312 requests"
    basis: str
    note: str | None


@dataclass
class MetricRow:
    metric: str
    label: str
    baseline: FigureText
    candidate: FigureText
    change: str
    tone: str  # "better" | "worse" | "same" | "neutral"


def _number(value: float, unit: str) -> str:
    if unit == "share":
        return f"{value * 100:.2f}%"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "GPUs":
        return f"{value:g} GPU{'s' if value != 1 else ''}"
    if unit in ("req/s", "inferences/s"):
        return f"{value:,.3g}/s" if value < 100 else f"{value:,.0f}/s"
    if unit == "MB":
        return f"{value:,.0f} MB"
    if len(unit) == 3 and unit.isupper():  # a currency
        return f"{value:,.2f} {unit}"
    return f"{value:g} {unit}".strip()


def _figure(figure: Figure, unit: str) -> FigureText:
    if figure.value is None:
        return FigureText(NO_DATA, "", figure.basis, (figure.note or NO_DATA).removeprefix(f"{NO_DATA}: "))
    counted = figure.sample_unit.removeprefix(f"{figure.source.value} ")  # "trtexec · 1 run", not "trtexec run"
    size = "" if figure.sample_size is None else f" · {figure.sample_size:,} {counted}"
    if figure.sample_size == 1 and counted.endswith("s"):
        size = f" · 1 {counted[:-1]}"
    return FigureText(_number(figure.value, unit), f"{figure.source.value}{size}", figure.basis, figure.note)


def _change(metric: Metric) -> tuple[str, str]:
    change = metric.change_percent
    if change is None:
        return "–", "neutral"
    if abs(change) < 0.05:
        return "±0%", "same"
    if metric.better == Better.NEITHER:
        return f"{'+' if change > 0 else '−'}{abs(change):.1f}%", "neutral"
    improved = (change < 0) == (metric.better == Better.LOWER)
    return f"{'+' if change > 0 else '−'}{abs(change):.1f}%", "better" if improved else "worse"


def _rows(arch: ArchitectureReport) -> list[MetricRow]:
    out = []
    for m in arch.metrics:
        change, tone = _change(m)
        out.append(MetricRow(m.metric, m.label, _figure(m.baseline, m.unit), _figure(m.candidate, m.unit),
                             change, tone))
    return out


def _charts(arch: ArchitectureReport, report: VersionReport, colors: dict[str, str]) -> list[Markup]:
    by_key = {m.metric: m for m in arch.metrics}
    sides = ((report.baseline, "baseline"), (report.candidate, "candidate"))

    def bar(label: str, version: str, metric: Metric, side: str) -> Bar:
        figure: Figure = getattr(metric, side)
        text = "no data" if figure.value is None else _number(figure.value, metric.unit)
        return Bar(label, figure.value, text, colors.get(version, PALETTE[-1]))

    latency = [bar(f"{source} · {version}", version, by_key[f"{source}_p99_ms"], side)
               for source in ("trtexec", "live") for version, side in sides]
    cost = by_key["cost_per_million"]
    cost_bars = [bar(f"{getattr(cost, side).source.value} · {v}".replace("none ·", "–"), v, cost, side)
                 for v, side in sides]
    capacity = by_key.get("cost_per_million_at_capacity")
    if capacity is not None and any(getattr(cost, side).source == Source.LIVE for _, side in sides):
        # live cost prices today's utilisation; the engines' own difference shows at capacity
        cost_bars += [bar(f"capacity · {v}", v, capacity, side) for v, side in sides]
    unit = cost.unit or "cost"
    return [bars(latency, title=f"p99 latency on {arch.gpu_arch}, baseline {report.baseline} and candidate "
                                f"{report.candidate}", width=300, label_w=96),
            bars(cost_bars, title=f"Cost per million inferences on {arch.gpu_arch} ({unit})", width=300,
                 label_w=96)]


async def _build(request: Request, db: SessionDep, name: str, baseline: str, candidate: str) -> VersionReport:
    return await reports_service.build(db, stats_store=request.app.state.stats_store,
                                       parity_store=request.app.state.parity_store, model_name=name,
                                       baseline=baseline or None, candidate=candidate or None, window=WINDOW)


def _file_name(report: VersionReport, extension: str) -> str:
    return f"{report.model}-{report.baseline}-vs-{report.candidate}.{extension}"


@router.get("/models/{name}/report")
async def report_page(name: str, request: Request, visitor: VisitorDep, db: SessionDep, baseline: str = "",
                      candidate: str = "") -> Response:
    _reader(visitor)
    report = await _build(request, db, name, baseline, candidate)
    model = await registry_service.get_model_or_raise(db, name=name)
    versions = [v.version for v in await registry_service.list_versions(db, model=model)
                if v.status != VersionStatus.RETIRED or v.version in (report.baseline, report.candidate)]
    colors = _colors(versions)
    query = urlencode({"baseline": report.baseline, "candidate": report.candidate})
    sections: list[dict[str, Any]] = [
        {"arch": arch, "rows": _rows(arch), "charts": _charts(arch, report, colors)} for arch in report.architectures]
    return _render(request, visitor, "report.html", {
        "model": model, "report": report, "sections": sections, "versions": versions, "colors": colors,
        "csv_url": f"/ui/models/{quote(name)}/report.csv?{query}",
        "json_url": f"/ui/models/{quote(name)}/report.json?{query}",
    })


@router.get("/models/{name}/report.csv")
async def report_csv(name: str, request: Request, visitor: VisitorDep, db: SessionDep, baseline: str = "",
                     candidate: str = "") -> Response:
    """One row per architecture x metric; an empty cell where there is not enough data, never a 0."""
    _reader(visitor)
    report = await _build(request, db, name, baseline, candidate)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=reports_service.CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(reports_service.rows(report))
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="{_file_name(report, "csv")}"'})


@router.get("/models/{name}/report.json")
async def report_json(name: str, request: Request, visitor: VisitorDep, db: SessionDep, baseline: str = "",
                      candidate: str = "") -> Response:
    """What ``GET /api/v1/models/{name}/report`` answers, for a signed-in browser."""
    _reader(visitor)
    report = await _build(request, db, name, baseline, candidate)
    return JSONResponse(report.model_dump(mode="json"), headers={
        "Content-Disposition": f'attachment; filename="{_file_name(report, "json")}"'})
