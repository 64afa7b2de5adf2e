"""Parity endpoints: routers push shadow-comparison windows; any authenticated caller reads merged figures."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Query, Request

from control_plane.deps import Reader, SessionDep, StatsReporter
from control_plane.errors import ERROR_RESPONSES, InvalidInput
from control_plane.parity import service as parity_service
from control_plane.parity.schemas import ModelParity, ParityReport, ParitySeries, ReportAccepted
from control_plane.registry import service as registry_service
from control_plane.registry.router import ModelPath

router = APIRouter(prefix="/api/v1", tags=["parity"], responses=ERROR_RESPONSES)


def get_store(request: Request) -> parity_service.ParityStore:
    return request.app.state.parity_store  # type: ignore[no-any-return]


ParityStoreDep = Annotated[parity_service.ParityStore, Depends(get_store)]


@router.post("/parity/report", status_code=202, response_model=ReportAccepted)
async def post_report(report: ParityReport, store: ParityStoreDep, _actor: StatsReporter) -> ReportAccepted:
    return ReportAccepted(windows=await parity_service.record(store, report=report))


@router.get("/models/{model}/parity", response_model=ModelParity)
async def get_model_parity(
    model: ModelPath, session: SessionDep, store: ParityStoreDep, _actor: Reader,
    window: Annotated[int, Query(ge=1, le=3600, description="seconds to look back")] = 300,
) -> ModelParity:
    """Shadow-against-primary output parity per (shadow version, primary version, gpu_arch of each side)."""
    found = await registry_service.get_model_or_raise(session, name=model)
    return await parity_service.get(store, model=found.name, window=window, now=time.time())


@router.get("/models/{model}/parity/series", response_model=ParitySeries)
async def get_model_parity_series(
    model: ModelPath, session: SessionDep, store: ParityStoreDep, _actor: Reader,
    window: Annotated[int, Query(ge=1, le=7 * 24 * 3600, description="seconds to look back")] = 3600,
    step: Annotated[int | None, Query(ge=1, le=24 * 3600, description="seconds per point; "
                                                                    "default: about 60 points")] = None,
) -> ParitySeries:
    """Parity over time: top-1 agreement and max-abs-error p99 per step, per pair and output."""
    found = await registry_service.get_model_or_raise(session, name=model)
    if window > store.retention:
        raise InvalidInput.field("window", f"parity windows are kept {int(store.retention)} s; ask for that or less")
    step = step or max(1, window // 60)
    now = time.time()
    _, points = parity_service.points_of(since=now - window, until=now, step=step)
    if points > parity_service.MAX_POINTS:
        raise InvalidInput.field("step", f"{points} points asked for, {parity_service.MAX_POINTS} at most: "
                                         "use a larger step")
    return await parity_service.series(store, model=found.name, since=now - window, until=now, step=step)


def install(app: FastAPI) -> None:
    """Called by ``create_app``: the store follows the settings (Redis when configured)."""
    settings = app.state.settings
    app.state.parity_store = parity_service.store_for(settings.redis_url, settings.stats_retention_seconds)
    app.include_router(router)
