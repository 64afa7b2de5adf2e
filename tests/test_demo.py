"""The newcomer path: `grayroute demo` runs a rollout judged on live traffic and stops without leaving anything behind."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.services import free_port

MODEL = "demo-classifier"
BODY = {"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": [0.25] * 16}]}


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, stack = set(), [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _start(data_dir: Path, port: int, router_port: int, *options: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAYROUTE_")}
    return subprocess.Popen(
        [sys.executable, "-m", "control_plane.cli", "demo", "--data-dir", str(data_dir), "--port", str(port),
         "--router-port", str(router_port), "--rps", "5", *options],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )


def _wait_for_banner(process: subprocess.Popen[str], timeout: float = 180) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    os.set_blocking(process.stdout.fileno(), False)
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line:
            lines.append(line)
            if line.startswith("Ctrl-C stops everything"):
                return lines
        elif process.poll() is not None:
            raise AssertionError("demo exited early:\n" + "".join(lines))
        else:
            time.sleep(0.1)
    raise AssertionError("demo did not become ready:\n" + "".join(lines))


def _versions(router: str, users: range) -> Counter[str]:
    seen: Counter[str] = Counter()
    with httpx.Client(base_url=router, timeout=10) as client:
        for n in users:
            response = client.post(f"/v2/models/{MODEL}/infer", json=BODY, headers={"x-user-id": f"u-{n}"})
            assert response.status_code == 200, response.text
            seen[response.headers["x-grayroute-version"]] += 1
    return seen


def _stop(process: subprocess.Popen[str]) -> None:
    tree = _descendants(process.pid)
    assert tree, "the demo should have child processes"
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in tree if _alive(p)], "processes left behind after Ctrl-C"


def _int8_pair(api: httpx.Client) -> tuple[int, int, float]:
    """(rows compared, rows whose top-1 agrees, max abs error) of the int8 shadow against the fp32 stable."""
    pairs = api.get(f"/models/{MODEL}/parity", params={"window": 600}).json()["pairs"]
    pair = next((p for p in pairs if (p["shadow_version"], p["primary_version"]) == ("3", "1")), None)
    if pair is None or not pair["outputs"]:
        return 0, 0, 0.0
    output = pair["outputs"][0]
    return output["top1_rows"], round(output["top1_agreement"] * output["top1_rows"]), output["max_abs_error"]


def _assert_the_int8_shadow_shows_its_problem(api: httpx.Client, router: str) -> None:
    """The seeded policy shadows the int8 rebuild; on traffic like the generator's its answers visibly differ."""
    rows_before, agree_before, _ = _int8_pair(api)
    rng = random.Random(3)
    with httpx.Client(base_url=router, timeout=10) as client:
        for n in range(300):
            body = {"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32",
                                "data": [rng.uniform(-1, 1) for _ in range(16)]}]}
            assert client.post(f"/v2/models/{MODEL}/infer", json=body, headers={"x-user-id": f"p-{n}"}).is_success
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows, agree, max_abs = _int8_pair(api)
        if rows - rows_before >= 40:
            break
        time.sleep(0.5)
    assert rows - rows_before >= 40, (rows_before, rows)  # 20% of 300 users are mirrored
    # Over the whole window, not the difference of two looks: the window slides between the looks, so older
    # comparisons leave it while these arrive. The generator's inputs are drawn as these are.
    agreement = agree / rows
    assert agreement < 0.95 and max_abs > 0.1, (agreement, max_abs, rows)


def _rollout(api: httpx.Client) -> dict:
    rollouts = api.get(f"/models/{MODEL}/rollouts").json()
    assert rollouts, "the demo should have started a rollout"
    return rollouts[0]


def _wait_rollout(api: httpx.Client, done: Callable[[dict], bool], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while not done(rollout := _rollout(api)) and time.monotonic() < deadline:
        time.sleep(1)
    assert done(rollout), rollout
    return rollout


def test_demo_rolls_out_a_good_candidate_in_steps_and_stops_cleanly(tmp_path: Path) -> None:
    port, router_port = free_port(), free_port()
    router = f"http://127.0.0.1:{router_port}"
    process = _start(tmp_path, port, router_port, "--rps", "12")
    try:
        banner = "".join(_wait_for_banner(process))
        assert f"http://127.0.0.1:{port}/ui" in banner and router in banner
        assert "rollout 1 of version 2 against 1: 10% → 25% → 50% → 100%" in banner
        admin = json.loads((tmp_path / "tokens.json").read_text())["admin"]
        assert admin in banner
        # The banner tells how to point the CLI at the demo's database, and that works from anywhere.
        database_url = re.search(r"export GRAYROUTE_DATABASE_URL=(\S+)", banner)
        assert database_url and database_url.group(1) == f"sqlite+aiosqlite:///{tmp_path / 'grayroute.db'}"
        # PYTHONPATH: from another directory, still this checkout's code (not whichever one is installed).
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRAYROUTE_")}
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
        listed = subprocess.run([sys.executable, "-m", "control_plane.cli", "token", "list"], cwd=tmp_path.parent,
                                env={**env, "GRAYROUTE_DATABASE_URL": database_url.group(1)}, capture_output=True,
                                text=True, timeout=60, check=False)
        assert listed.returncode == 0 and "demo-router" in listed.stdout, listed.stderr

        api = httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", headers={"Authorization": f"Bearer {admin}"})
        # The generated traffic is enough evidence: the controller passes step 1 and gives 2 a quarter of users.
        rollout = _wait_rollout(api, lambda r: r["step_index"] >= 1, timeout=240)
        assert rollout["state"] in ("running", "succeeded"), rollout
        assert rollout["latest_verdict"]["per_arch"]["sm_80"]["candidate"]["requests"] > 0
        seen = _versions(router, range(2000))
        assert set(seen) == {"1", "2"} and seen["2"] / 2000 >= 0.2, seen
        # Little generated traffic (12/s) so the parity check below is about its own inputs.
        _assert_the_int8_shadow_shows_its_problem(api, router)
        # The demo's pool is priced, so its version report prices the demo's engines.
        report = api.get(f"/models/{MODEL}/report")
        assert report.status_code == 200, report.text
        section = report.json()["architectures"][0]
        assert section["cost_pool"] == {"pool": "local-cpu", "gpu_hourly_price": 2.5, "currency": "USD",
                                        "gpus_per_replica": 1}
        cost = next(m for m in section["metrics"] if m["metric"] == "cost_per_million")
        assert cost["baseline"]["value"] > 0 and cost["candidate"]["value"] > 0, cost
        api.close()
    finally:
        if process.poll() is None:
            _stop(process)

    # A second run continues from the same database, and the rollout where it was.
    process = _start(tmp_path, port, router_port, "--rps", "12")
    try:
        banner = "".join(_wait_for_banner(process))
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1",
                          headers={"Authorization": f"Bearer {admin}"}) as api:
            again = _rollout(api)
            assert again["id"] == rollout["id"] and again["step_index"] >= rollout["step_index"]
            assert len(api.get(f"/models/{MODEL}/rollouts").json()) == 1
        assert "rollout 1 of version 2 continues" in banner or again["state"] == "succeeded", banner
    finally:
        if process.poll() is None:
            _stop(process)


def test_demo_bad_canary_is_rolled_back_by_the_controller_alone(tmp_path: Path) -> None:
    port, router_port = free_port(), free_port()
    process = _start(tmp_path, port, router_port, "--scenario", "bad-canary", "--rps", "30")
    try:
        banner = "".join(_wait_for_banner(process))
        assert "rollout 1 of version 4 against 1" in banner and "roll back by itself" in banner
        admin = json.loads((tmp_path / "tokens.json").read_text())["admin"]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1",
                          headers={"Authorization": f"Bearer {admin}"}) as api:
            rollout = _wait_rollout(api, lambda r: r["state"] != "running", timeout=150)
            assert rollout["state"] == "rolled_back" and rollout["step_index"] == 0, rollout
            assert rollout["latest_verdict"]["verdict"] == "fail"
            traffic = api.get(f"/models/{MODEL}/traffic").json()
            assert traffic["splits"] == [{"version": "1", "weight": 100.0}], traffic
            assert traffic["created_by"] == f"rollout:{rollout['id']}"
            events = api.get("/audit", params={"model": MODEL}).json()
            rolled_back = [e for e in events if e["action"] == "rollout.rolled_back"]
            assert len(rolled_back) == 1, events
            assert re.search(r"error rate|p99|hard limit", rolled_back[0]["reason"]), rolled_back  # the verdict
            assert _versions(f"http://127.0.0.1:{router_port}", range(300)) == Counter({"1": 300})
    finally:
        if process.poll() is None:
            _stop(process)
