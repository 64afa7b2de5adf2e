"""A step's pools: the reconciler deploys the candidate only there while the step lasts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from control_plane.db import create_engine, session_factory
from control_plane.reconciler import desired as D
from control_plane.reconciler import service as reconciler_service
from control_plane.settings import Settings
from tests.control_plane.conftest import Api
from tests.reconciler.conftest import pool, traffic, version

NOW = datetime(2026, 1, 1, tzinfo=UTC)
POOLS = (pool(1, "a100", "sm_80", kind="local"), pool(2, "h100", "sm_90", kind="local"))


def plan(placement: dict[str, frozenset[str]], previous: tuple[D.PreviousStatus, ...] = ()) -> D.Plan:
    versions = (version(10, "3", "sm_80", "sm_90"), version(11, "4", "sm_80", "sm_90"))
    model = D.ModelSpec(1, "m", versions, traffic("3", ("3", 95), ("4", 5)), placement=placement)
    return D.plan(D.Inputs((model,), POOLS, previous), kind="local", now=NOW, drain=timedelta(seconds=60))


def test_a_held_version_is_deployed_only_on_its_pools_and_drains_elsewhere() -> None:
    everywhere = plan({})
    assert {d.key for d in everywhere.deployments} == {(10, 1), (10, 2), (11, 1), (11, 2)}
    held = plan({"4": frozenset({"h100"})})
    assert {d.key for d in held.deployments} == {(10, 1), (10, 2), (11, 2)}
    assert not held.failures  # held away from a pool is not a failure
    # Already running on a100 from an earlier step: it drains there rather than vanishing at once.
    previous = (D.PreviousStatus(11, 1, 1, "ready"),)
    draining = {d.key: d.intent for d in plan({"4": frozenset({"h100"})}, previous).deployments}
    assert draining[(11, 1)] is D.Intent.DRAINING and draining[(11, 2)] is D.Intent.ACTIVE


async def test_the_running_steps_pools_reach_the_reconcilers_inputs(api: Api, cp_settings: Settings) -> None:
    api.pool("a100", gpu_arch="sm_80", kind="local")
    api.pool("h100", gpu_arch="sm_90", kind="local")
    api.model("m")
    api.version("m", "3", archs=("sm_80", "sm_90"), precision="fp32")
    api.version("m", "4", archs=("sm_80", "sm_90"))
    assert api.traffic("m", {"3": 100}, default="3").status_code == 200
    response = api.as_("release-manager").post("/models/m/rollouts", json={
        "candidate": "4", "reason": "h100 first",
        "steps": [{"weight": 5, "pools": ["h100"]}, {"weight": 50}, {"weight": 100}]})
    assert response.status_code == 201, response.text
    engine = create_engine(cp_settings)
    try:
        async with session_factory(engine)() as session:
            inputs = await reconciler_service.load_inputs(session, kind="local")
        (model,) = inputs.models
        assert model.placement == {"4": frozenset({"h100"})}
        local = D.plan(inputs, kind="local", now=NOW, drain=timedelta(seconds=60))
        assert sorted((d.version, d.pool.name) for d in local.deployments) == \
            [("3", "a100"), ("3", "h100"), ("4", "h100")]
        # The next step names no pools: the candidate goes everywhere (promote jumps there at once).
        api.as_("release-manager").post("/models/m/rollouts/1/promote", json={"reason": "go"})
        async with session_factory(engine)() as session:
            inputs = await reconciler_service.load_inputs(session, kind="local")
        assert inputs.models[0].placement == {}
    finally:
        await engine.dispose()
