"""``grayroute rollout`` as a pipeline runs it: a subprocess against the live control plane."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.control_plane.conftest import Api
from tests.services import LiveServer

ROOT = Path(__file__).resolve().parents[2]


def grayroute(server: LiveServer, token: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAYROUTE_")}
    env.update({"GRAYROUTE_TOKEN": token, "GRAYROUTE_CONTROL_PLANE_URL": server.url})
    return subprocess.run([sys.executable, "-m", "control_plane.cli", "rollout", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def seed(api: Api) -> None:
    api.pool()
    api.model("resnet50")
    api.version("resnet50", "3", precision="fp32")
    api.version("resnet50", "4")
    assert api.traffic("resnet50", {"3": 100}, default="3").status_code == 200


def test_start_status_and_wait_until_aborted(api: Api, cp_server: LiveServer) -> None:
    seed(api)
    token = api.tokens["release-manager"]
    started = grayroute(cp_server, token, "start", "resnet50", "--candidate", "4", "--steps", "5:60,50:60,100",
                        "--analysis", "min_requests=50", "--reason", "build 4")
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("rollout 1 of resnet50: running, step 1/3, candidate 4 at 5%")
    status = grayroute(cp_server, token, "status", "resnet50", "--json")
    assert status.returncode == 0 and '"analysis"' in status.stdout and '"min_requests": 50' in status.stdout
    # A pipeline waits; someone aborts once it is watching: the wait ends with exit status 1 and says why.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAYROUTE_")}
    env.update({"GRAYROUTE_TOKEN": token, "GRAYROUTE_CONTROL_PLANE_URL": cp_server.url})
    waiting = subprocess.Popen([sys.executable, "-m", "control_plane.cli", "rollout", "status", "resnet50", "--wait",
                                "--interval", "0.2"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert waiting.stdout is not None
    first = waiting.stdout.readline()
    assert "running, step 1/3" in first
    began = time.monotonic()
    api.as_("admin").post("/models/resnet50/rollouts/1/abort", json={"reason": "bad dashboard"})
    rest, errors = waiting.communicate(timeout=30)
    assert waiting.returncode == 1, errors
    assert "aborted" in rest and "bad dashboard" in rest and len(rest.strip().splitlines()) == 1
    assert time.monotonic() - began < 10
    # A second rollout, promoted through the CLI: --wait then exits 0 at once.
    assert grayroute(cp_server, token, "start", "resnet50", "--candidate", "4", "--steps", "10:30,100",
                     "--reason", "again").returncode == 0
    promoted = grayroute(cp_server, token, "promote", "resnet50", "--reason", "looks good")
    assert promoted.returncode == 0 and "succeeded" in promoted.stdout
    assert grayroute(cp_server, token, "status", "resnet50", "--wait").returncode == 0


def test_refusals_are_one_line(api: Api, cp_server: LiveServer) -> None:
    seed(api)
    token = api.tokens["release-manager"]
    for args, expected in (
        (("start", "resnet50", "--candidate", "4", "--steps", "50,10,100", "--reason", "x"), "steps[1].weight"),
        (("start", "resnet50", "--candidate", "4", "--steps", "5:x,100", "--reason", "x"), "--steps"),
        (("start", "resnet50", "--candidate", "3", "--steps", "5,100", "--reason", "x"), "candidate"),
        (("start", "nope", "--candidate", "4", "--steps", "5,100", "--reason", "x"), "404"),
        (("pause", "resnet50", "--reason", "x"), "no running or paused rollout"),
        (("status", "resnet50"), "no rollouts"),
    ):
        result = grayroute(cp_server, token, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    viewer = grayroute(cp_server, api.tokens["viewer"], "start", "resnet50", "--candidate", "4", "--steps", "5,100",
                       "--reason", "x")
    assert viewer.returncode == 2 and "403" in viewer.stderr


def test_start_with_a_shadow_phase_and_a_bad_shadow_argument(api: Api, cp_server: LiveServer) -> None:
    seed(api)
    token = api.tokens["release-manager"]
    bad = grayroute(cp_server, token, "start", "resnet50", "--candidate", "4", "--steps", "5,100",
                    "--shadow", "ten", "--reason", "build 4")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "PERCENT:SECONDS" in bad.stderr
    started = grayroute(cp_server, token, "start", "resnet50", "--candidate", "4", "--steps", "5,100",
                        "--shadow", "10:300", "--analysis", "min_top1_agreement=0.995", "--reason", "build 4")
    assert started.returncode == 0, started.stderr
    assert "shadow phase, 10% of users mirrored to 4" in started.stdout
    assert api.get("/models/resnet50/traffic").json()["shadow"] == {"version": "4", "percent": 10}
