"""The models overview: every model's live split, pool health and last change."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request, Response

from control_plane.audit import service as audit_service
from control_plane.deployments import service as deployments_service
from control_plane.deps import SessionDep
from control_plane.registry import service as registry_service
from control_plane.registry.models import VersionStatus
from control_plane.traffic import service as traffic_service
from web.views.pages import (
    PHASE_TONE,
    VisitorDep,
    _colors,
    _PageRoute,
    _reader,
    _render,
)

router = APIRouter(prefix="/ui", route_class=_PageRoute, include_in_schema=False)


def _pool_health(deployments: Sequence[tuple[Any, Any, Any]]) -> list[dict[str, Any]]:
    """Per pool: how many of the model's replicas there are ready, and the worst phase."""
    rank = {"bad": 3, "warn": 2, "muted": 1, "ok": 0}
    pools: dict[str, dict[str, Any]] = {}
    for deployment, version, pool in deployments:
        entry = pools.setdefault(pool.name, {"pool": pool.name, "gpu_arch": pool.gpu_arch, "ready": 0, "total": 0,
                                             "tone": "ok", "versions": []})
        tone = PHASE_TONE.get(deployment.phase, "warn")
        # Replicas, not deployments: "3/4 ready" should mean one replica is missing.
        entry["total"] += deployment.desired_replicas
        entry["ready"] += deployment.ready_replicas
        entry["versions"].append(f"{version.version}: {deployment.phase} "
                                 f"{deployment.ready_replicas}/{deployment.desired_replicas}")
        if rank[tone] > rank[entry["tone"]]:
            entry["tone"] = tone
    return list(pools.values())


@router.get("/")
async def overview(request: Request, visitor: VisitorDep, db: SessionDep) -> Response:
    _reader(visitor)
    rows = []
    models = await registry_service.list_models(db)
    live = await traffic_service.current_by_model(db, model_ids=[m.id for m in models])
    for model in models:
        current = live.get(model.id)
        last = await audit_service.list(db, model=model.name, limit=1)
        labels = [v.version for v in model.versions]
        rows.append({
            "model": model,
            "current": current,
            "colors": _colors(labels),
            "versions": [v for v in model.versions if v.status != VersionStatus.RETIRED],
            "health": _pool_health(await deployments_service.list_deployments(db, model=model)),
            "last": last[0] if last else None,
        })
    return _render(request, visitor, "overview.html", {"rows": rows})
