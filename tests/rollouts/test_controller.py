"""The controller end to end: real router, local reconciler and engine servers, Postgres and Redis.

Each test starts users sending requests through the router, starts a rollout
through the API and lets the real controller judge it. Pauses and minimum
requests are small so a test takes tens of seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from control_plane.app import create_app
from control_plane.db import create_engine, session_factory
from control_plane.reconciler.engine_server import Fault
from control_plane.rollouts import service as rollouts_service
from control_plane.rollouts.controller import LEASE_NAME
from control_plane.settings import Settings
from tests.control_plane.conftest import Api
from tests.rollouts.stack import MODEL, Stack, seed, until
from tests.services import LiveServer

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture
async def stacks(cp_settings: Settings, api: Api, tmp_path: Path) -> AsyncIterator[list[Stack]]:
    started: list[Stack] = []
    yield started
    for stack in started:
        await stack.close()


async def make_stack(stacks: list[Stack], settings: Settings, api: Api, path: Path, **faults: Fault) -> Stack:
    stack = Stack(settings, api, path, faults)
    stacks.append(stack)
    return await stack.start()


def start(api: Api, steps: list[dict[str, Any]], **analysis: Any) -> dict[str, Any]:
    response = api.as_("release-manager").post(f"/models/{MODEL}/rollouts", json={
        "candidate": "4", "reason": "ship 4", "steps": steps, "analysis": {"min_requests": 30, **analysis}})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def rollout(api: Api, rollout_id: int) -> dict[str, Any]:
    return api.get(f"/models/{MODEL}/rollouts/{rollout_id}").json()  # type: ignore[no-any-return]


async def finished(api: Api, rollout_id: int, timeout: float) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        found = rollout(api, rollout_id)
        return found if found["state"] not in ("running", "paused") else None
    return await until(done, timeout, f"rollout {rollout_id} finished", every=0.3)  # type: ignore[no-any-return]


def weights(api: Api) -> tuple[dict[str, float], str]:
    traffic = api.get(f"/models/{MODEL}/traffic").json()
    return {s["version"]: s["weight"] for s in traffic["splits"] if s["weight"]}, traffic["default_version"]


def audit(api: Api) -> list[dict[str, Any]]:
    return list(reversed(api.get("/audit", params={"model": MODEL, "limit": 500}).json()))


async def test_a_good_candidate_goes_through_every_step_and_becomes_the_default(
        cp_settings: Settings, api: Api, tmp_path: Path, stacks: list[Stack]) -> None:
    seed(api, pools={"cpu": "sm_80"})
    stack = await make_stack(stacks, cp_settings, api, tmp_path)
    await stack.ready({"3"})
    stack.send_load()
    stack.controller()
    started = start(api, [{"weight": 20, "pause_seconds": 2}, {"weight": 50, "pause_seconds": 2}, {"weight": 100}])
    done = await finished(api, started["id"], 120)
    assert done["state"] == "succeeded", done
    assert (done["phase"], done["step_index"]) == ("done", 3)
    assert weights(api) == ({"4": 100}, "4")
    passes = [v for v in done["verdicts"] if v["verdict"] == "pass"]
    assert [v["step_index"] for v in passes] == [0, 1]
    assert all(v["per_arch"]["sm_80"]["candidate"]["requests"] >= 30 for v in passes)
    actions = [e["action"] for e in audit(api) if e["action"].startswith("rollout.")]
    assert actions == ["rollout.started", "rollout.step_advanced", "rollout.succeeded"]
    revisions = api.get(f"/models/{MODEL}/traffic/revisions").json()
    by_rollout = [r for r in revisions if r["created_by"] == f"rollout:{started['id']}"]
    assert [{s["version"]: s["weight"] for s in r["splits"]}["4"] for r in reversed(by_rollout)] == [20, 50, 100]
    assert "passed" in by_rollout[0]["reason"]
    assert stack.answers.get(200, 0) > 100 and set(stack.answers) == {200}
    # Finished: people may change traffic again.
    assert api.traffic(MODEL, {"4": 100}, default="4", reason="after").status_code == 200


async def test_a_candidate_with_errors_is_rolled_back_by_itself(
        cp_settings: Settings, api: Api, tmp_path: Path, stacks: list[Stack]) -> None:
    seed(api, pools={"cpu": "sm_80"})
    stack = await make_stack(stacks, cp_settings, api, tmp_path, **{"4": Fault(error_rate=0.25)})
    await stack.ready({"3"})
    stack.send_load()
    stack.controller()
    started = start(api, [{"weight": 30, "pause_seconds": 600}, {"weight": 100}])
    done = await finished(api, started["id"], 90)
    assert done["state"] == "rolled_back", done
    assert weights(api) == ({"3": 100}, "3")
    failing = done["latest_verdict"]
    assert failing["verdict"] == "fail" and failing["step_index"] == 0
    checks = {e["check"]: e["verdict"] for e in failing["per_arch"]["sm_80"]["evidence"]}
    assert "fail" in (checks.get("error_rate"), checks.get("hard_error_rate"))
    event = [e for e in audit(api) if e["action"] == "rollout.rolled_back"][0]
    assert event["actor"] == f"rollout:{started['id']}"
    assert "verdict fail" in event["reason"] and "error rate" in event["reason"]
    assert event["after"]["evidence"]["sm_80"]["verdict"] == "fail"
    live = api.get(f"/models/{MODEL}/traffic").json()
    assert live["created_by"] == f"rollout:{started['id']}" and "verdict fail" in live["reason"]
    assert live["reapplied_from"] == started["start_revision"]


def start_with_shadow(api: Api, candidate: str, steps: list[dict[str, Any]], **analysis: Any) -> dict[str, Any]:
    response = api.as_("release-manager").post(f"/models/{MODEL}/rollouts", json={
        "candidate": candidate, "reason": f"ship {candidate}", "steps": steps,
        "shadow": {"percent": 50, "seconds": 2}, "analysis": {"min_requests": 60, **analysis}})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def test_a_shadow_phase_rolls_back_an_engine_whose_answers_disagree(
        cp_settings: Settings, api: Api, tmp_path: Path, stacks: list[Stack]) -> None:
    """A real int8 rebuild (calibrated on a range too narrow) mirrored beside the fp32 stable: it never gets traffic."""
    seed(api, pools={"cpu": "sm_80"})
    api.version(MODEL, "5", archs=("sm_80",), precision="int8")
    stack = await make_stack(stacks, cp_settings, api, tmp_path)
    await stack.ready({"3"})
    stack.send_load(varied=True)
    stack.controller()
    started = start_with_shadow(api, "5", [{"weight": 20, "pause_seconds": 1}, {"weight": 100}],
                                min_top1_agreement=0.99)
    assert started["phase"] == "shadow"
    live = api.get(f"/models/{MODEL}/traffic").json()
    assert live["shadow"] == {"version": "5", "percent": 50} and weights(api) == ({"3": 100}, "3")
    done = await finished(api, started["id"], 120)
    assert done["state"] == "rolled_back", done
    failing = done["latest_verdict"]
    assert failing["verdict"] == "fail" and failing["reason"].startswith("shadow phase:")
    checks = {e["check"]: e for e in failing["per_arch"]["sm_80"]["evidence"]}
    assert checks["top1_agreement"]["verdict"] == "fail" and checks["top1_agreement"]["statistic"] < 0.99
    live = api.get(f"/models/{MODEL}/traffic").json()
    assert live["shadow"] is None and weights(api) == ({"3": 100}, "3")
    event = [e for e in audit(api) if e["action"] == "rollout.rolled_back"][0]
    assert "in its shadow phase" in event["reason"] and "top-1 agreement" in event["reason"]


async def test_a_shadow_phase_passes_a_faithful_engine_on_to_its_steps(
        cp_settings: Settings, api: Api, tmp_path: Path, stacks: list[Stack]) -> None:
    """The fp16 rebuild agrees with fp32 on nearly every row: the phase passes, its mirror ends, the steps run."""
    seed(api, pools={"cpu": "sm_80"})
    stack = await make_stack(stacks, cp_settings, api, tmp_path)
    await stack.ready({"3"})
    stack.send_load(varied=True)
    stack.controller()
    started = start_with_shadow(api, "4", [{"weight": 30, "pause_seconds": 1}, {"weight": 100}],
                                min_top1_agreement=0.95)
    done = await finished(api, started["id"], 150)
    assert done["state"] == "succeeded", done
    assert weights(api) == ({"4": 100}, "4")
    assert api.get(f"/models/{MODEL}/traffic").json()["shadow"] is None
    actions = [e["action"] for e in audit(api) if e["action"].startswith("rollout.")]
    assert actions == ["rollout.started", "rollout.shadow_passed", "rollout.succeeded"], actions
    passed = [v for v in done["verdicts"] if v["reason"].startswith("shadow phase:") and v["verdict"] == "pass"]
    assert passed and passed[0]["per_arch"]["sm_80"]["candidate"]["compared"] >= 60


async def test_a_candidate_slow_on_one_architecture_is_caught_there(
        cp_settings: Settings, api: Api, tmp_path: Path, stacks: list[Stack]) -> None:
    seed(api, pools={"pool-a": "sm_80", "pool-b": "sm_90"})
    stack = await make_stack(stacks, cp_settings, api, tmp_path, **{"4@pool-b": Fault(extra_latency_ms=60)})
    await stack.ready({"3"}, pools=2)
    stack.send_load(concurrency=12)
    stack.controller()
    # min_requests out of reach: the step can only fail, and only on evidence.
    started = start(api, [{"weight": 50, "pause_seconds": 600}, {"weight": 100}], min_requests=10**6,
                    variance_inflation=1.0, alpha=0.2)
    done = await finished(api, started["id"], 120)
    assert done["state"] == "rolled_back", done
    per_arch = done["latest_verdict"]["per_arch"]
    assert per_arch.get("sm_90", {}).get("verdict") == "fail", (
        done["outcome"], [(d["version"], d["gpu_arch"], d["error_kinds"]) for d in
                          api.get(f"/models/{MODEL}/stats", params={"window": 300}).json()["deployments"]])
    assert per_arch["sm_80"]["verdict"] != "fail"
    assert [e["check"] for e in per_arch["sm_90"]["evidence"] if e["verdict"] == "fail"] == ["p99_ratio"]
    assert "sm_90" in done["outcome"] and "sm_80:" not in done["outcome"]


async def test_a_restarted_controller_resumes_the_same_step_with_the_pause_served(
        cp_settings: Settings, api: Api, tmp_path: Path, stacks: list[Stack]) -> None:
    seed(api, pools={"cpu": "sm_80"})
    stack = await make_stack(stacks, cp_settings, api, tmp_path)
    await stack.ready({"3"})
    stack.send_load()
    first = stack.controller()
    pause = 10
    started = start(api, [{"weight": 30, "pause_seconds": pause}, {"weight": 60, "pause_seconds": 600},
                          {"weight": 100}])
    # The candidate is ready and the step's clock runs once verdicts are about figures, not readiness.
    await until(lambda: (v := rollout(api, started["id"])["latest_verdict"]) and v["per_arch"], 60,
                "a verdict on figures")
    step_started = rollout(api, started["id"])["step_started_at"]
    await stack.stop_controller(first)
    # Down long enough for the pause to be over; nobody drives in the meantime.
    await until(lambda: time.time() > datetime.fromisoformat(step_started).timestamp() + pause + 1, pause + 5,
                "pause over")
    during = rollout(api, started["id"])
    assert (during["step_index"], during["step_started_at"]) == (0, step_started)
    restarted_at = time.monotonic()
    stack.controller()
    await until(lambda: rollout(api, started["id"])["step_index"] == 1, 30, "step 2")
    # The pause was not served again: the new controller advanced within a few ticks.
    assert time.monotonic() - restarted_at < pause / 2
    assert weights(api)[0] == {"3": 40, "4": 60}


async def test_two_controllers_never_both_drive(
        cp_settings: Settings, api: Api, tmp_path: Path, stacks: list[Stack]) -> None:
    seed(api, pools={"cpu": "sm_80"})
    stack = await make_stack(stacks, cp_settings, api, tmp_path)
    await stack.ready({"3"})
    stack.send_load()
    controllers = [stack.controller(tick_seconds=0.2) for _ in range(4)]
    started = start(api, [{"weight": 20, "pause_seconds": 1}, {"weight": 40, "pause_seconds": 1},
                          {"weight": 60, "pause_seconds": 1}, {"weight": 100}])
    everyone = list(controllers)
    stopped = None
    deadline = time.monotonic() + 120
    while (state := rollout(api, started["id"]))["state"] == "running":
        leading = [c for c in controllers if c.leader]
        if stopped is None and state["step_index"] == 1 and leading:
            stopped = leading[0]  # the leader goes away mid-rollout: another takes over
            await stack.stop_controller(stopped)
            controllers.remove(stopped)
        assert time.monotonic() < deadline, state
        await asyncio.sleep(0.1)
    assert rollout(api, started["id"])["state"] == "succeeded"
    # The deciding controller notes its decision once its transaction has committed and published, which
    # can be a moment after the API already shows the outcome.
    await until(lambda: any(d[2] == "rollout.succeeded" for c in everyone for d in c.decisions), 10,
                "the final decision noted")
    # Each transition was made once, by whoever held the lease at the time; two replicas made them.
    decisions = sorted((d, c.holder) for c in everyone for d in c.decisions)
    assert [d for d, _ in decisions] == [(started["id"], 0, "rollout.step_advanced"),
                                         (started["id"], 1, "rollout.step_advanced"),
                                         (started["id"], 2, "rollout.succeeded")]
    assert stopped is not None and len({holder for _, holder in decisions}) == 2
    actions = [e["action"] for e in audit(api) if e["action"].startswith("rollout.")]
    assert actions == ["rollout.started", "rollout.step_advanced", "rollout.step_advanced", "rollout.succeeded"]
    revisions = [r for r in api.get(f"/models/{MODEL}/traffic/revisions").json()
                 if r["created_by"] == f"rollout:{started['id']}"]
    assert len(revisions) == 4  # one per step: no step was applied twice


async def test_the_lease_goes_to_one_of_a_burst(cp_settings: Settings, api: Api) -> None:
    engine = create_engine(cp_settings)
    sessions = session_factory(engine)
    try:
        async def attempt(i: int) -> bool:
            async with sessions() as session:
                held = await rollouts_service.hold_lease(session, name="burst-test", holder=f"replica-{i}",
                                                         ttl_seconds=30)
                await session.commit()
                return held
        assert sum(await asyncio.gather(*(attempt(i) for i in range(10)))) == 1
        assert LEASE_NAME != "burst-test"
    finally:
        await engine.dispose()


def test_serve_runs_the_controller(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'grayroute.db'}", rollout_tick_seconds=0.1,
                        state_dir=tmp_path)
    app = create_app(settings)
    server = LiveServer(app).start()
    try:
        deadline = time.monotonic() + 10
        while not (app.state.rollout_controller.leader and app.state.rollout_controller.ticks >= 3):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        server.stop()
    assert not app.state.rollout_controller.leader  # the lease is given back on shutdown
