"""Stats endpoints: routers push windows (and only that); people read merged figures."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Query, Request

from control_plane.deps import Reader, SessionDep, StatsReporter
from control_plane.errors import ERROR_RESPONSES, InvalidInput
from control_plane.registry import service as registry_service
from control_plane.registry.router import ModelPath
from control_plane.stats import service as stats_service
from control_plane.stats.schemas import ModelSeries, ModelStats, ReportAccepted, StatsReport

router = APIRouter(prefix="/api/v1", tags=["stats"], responses=ERROR_RESPONSES)


def get_store(request: Request) -> stats_service.StatsStore:
    return request.app.state.stats_store  # type: ignore[no-any-return]


StatsStoreDep = Annotated[stats_service.StatsStore, Depends(get_store)]


@router.post("/stats/report", status_code=202, response_model=ReportAccepted)
async def post_report(report: StatsReport, store: StatsStoreDep, _actor: StatsReporter) -> ReportAccepted:
    return ReportAccepted(models=await stats_service.record(store, report=report))


@router.get("/models/{model}/stats", response_model=ModelStats)
async def get_model_stats(
    model: ModelPath, session: SessionDep, store: StatsStoreDep, _actor: Reader,
    window: Annotated[int, Query(ge=1, le=7 * 24 * 3600, description="seconds to look back (at most the "
                                                                     "retention period)")] = 60,
) -> ModelStats:
    """Per assigned version (split, rule or explicit choice) and per serving (version, pool, gpu_arch)."""
    found = await registry_service.get_model_or_raise(session, name=model)
    if window > store.retention:
        raise InvalidInput.field("window", f"figures are kept {store.retention} s; ask for that or less")
    return await stats_service.get(store, model=found.name, window=window)


@router.get("/models/{model}/stats/series", response_model=ModelSeries)
async def get_model_series(
    model: ModelPath, session: SessionDep, store: StatsStoreDep, _actor: Reader,
    window: Annotated[int | None, Query(ge=1, le=7 * 24 * 3600, description="seconds to look back from now; "
                                                                            "or give since")] = None,
    since: Annotated[float | None, Query(ge=0, le=1e11, description="start, seconds since the epoch")] = None,
    step: Annotated[int | None, Query(ge=10, le=24 * 3600, description="seconds per point, a multiple of 10; "
                                                                     "default: about 60 points")] = None,
) -> ModelSeries:
    """Merged windows as time series: one point per step, per assigned version and per deployment."""
    found = await registry_service.get_model_or_raise(session, name=model)
    now = time.time()
    if window is not None and since is not None:
        raise InvalidInput.field("since", "give window or since, not both")
    start = since if since is not None else now - (window or 3600)
    if start > now:
        raise InvalidInput.field("since", "is in the future")
    if start < now - store.retention - stats_service.COARSE:
        raise InvalidInput.field("window" if since is None else "since",
                                 f"figures are kept {store.retention} s; ask for that or less")
    if step is None:
        step = max(stats_service.FINE, int((now - start) / 60) // stats_service.FINE * stats_service.FINE)
        if step > stats_service.COARSE:
            step = step // stats_service.COARSE * stats_service.COARSE
    return await stats_service.series(store, model=found.name, since=start, until=now, step=step)


def install(app: FastAPI) -> None:
    """Called by ``create_app``: the store follows the settings (Redis when configured)."""
    settings = app.state.settings
    app.state.stats_store = stats_service.store_for(settings.redis_url, settings.stats_retention_seconds)
    app.include_router(router)
