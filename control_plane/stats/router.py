"""Stats endpoints: routers push windows (and only that); people read merged figures."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Query, Request

from control_plane.deps import Reader, SessionDep, StatsReporter
from control_plane.errors import ERROR_RESPONSES
from control_plane.registry import service as registry_service
from control_plane.registry.router import ModelPath
from control_plane.stats import service as stats_service
from control_plane.stats.schemas import ModelStats, ReportAccepted, StatsReport

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
    window: Annotated[int, Query(ge=1, le=3600, description="seconds to look back")] = 60,
) -> ModelStats:
    found = await registry_service.get_model_or_raise(session, name=model)
    return await stats_service.get(store, model=found.name, window=window)


def install(app: FastAPI) -> None:
    """Called by ``create_app``: the store follows the settings (Redis when configured)."""
    settings = app.state.settings
    app.state.stats_store = stats_service.store_for(settings.redis_url, settings.stats_retention_seconds)
    app.include_router(router)
