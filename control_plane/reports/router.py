"""The version report endpoint: any authenticated reader; it changes nothing."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from control_plane.deps import Reader, SessionDep
from control_plane.errors import ERROR_RESPONSES
from control_plane.parity.router import ParityStoreDep
from control_plane.registry.router import ModelPath
from control_plane.registry.schemas import VERSION_LABEL
from control_plane.reports import service as reports_service
from control_plane.reports.schemas import VersionReport
from control_plane.stats.router import StatsStoreDep

router = APIRouter(prefix="/api/v1", tags=["reports"], responses=ERROR_RESPONSES)

DEFAULT_WINDOW = 300


@router.get("/models/{model}/report", response_model=VersionReport)
async def get_report(
    model: ModelPath, session: SessionDep, stats_store: StatsStoreDep, parity_store: ParityStoreDep, _actor: Reader,
    baseline: Annotated[str | None, Query(pattern=VERSION_LABEL, max_length=63,
                                          description="default: the model's default version")] = None,
    candidate: Annotated[str | None, Query(pattern=VERSION_LABEL, max_length=63,
                                           description="default: the version with the most traffic besides "
                                                       "the baseline")] = None,
    window: Annotated[int, Query(ge=60, le=7 * 24 * 3600, description="seconds of live figures")] = DEFAULT_WINDOW,
) -> VersionReport:
    """Baseline against candidate per GPU architecture: trtexec and live figures, cost, GPUs needed, parity."""
    return await reports_service.build(session, stats_store=stats_store, parity_store=parity_store,
                                       model_name=model, baseline=baseline, candidate=candidate, window=window)
