"""What a shadow costs the client: the primary path's latency at a paced rate, without and with a 10% shadow.

A script, not a test. Everything runs on 127.0.0.1 and stops by itself:

    python -m tests.bench.bench_shadow [--rate 1000] [--seconds 5] [--rounds 8] [--percent 10]

- two fast backends (``tests.router.kserve``) answering every infer request with a
  1x1000 FP32 JSON output, with different values, so each comparison does the full work;
- two router processes on the same snapshot (100% to version 3), one of them also
  mirroring ``--percent`` of users to version 4;
- rounds alternate between them in ABBA order, so the machine's background load hits
  both alike; each round is the paced open-loop client of ``bench_router`` (every
  request sent on schedule whether or not earlier ones answered, latency timed from
  its send, keep-alive connections); p50 and p99 per round, medians over rounds;
- router CPU per request in each mode (CPU time of that router process only), what the
  shadowed router mirrored, compared and dropped (its ``/metrics``), the memory bound
  of the mirrors, and CPU per compared response (``bench_parity``'s measurement).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import orjson

from router.parity import ParityRecorder
from router.settings import RouterSettings
from tests.bench.bench_parity import binary_answer, json_answer
from tests.bench.bench_router import cpu_seconds, paced, processes
from tests.services import free_port, wait_for_port

ELEMENTS = 1000


def _snapshot(b3: int, b4: int, shadow: float) -> bytes:
    return orjson.dumps({"revision": 1, "models": {"resnet50": {
        "salt": "resnet50", "default_version": "3",
        **({"shadow": {"version": "4", "percent": shadow}} if shadow else {}),
        "splits": [{"version": "3", "weight": 100}, {"version": "4", "weight": 0}],
        "allocation": [[0, 10000, "3"]],
        "versions": {"3": {"endpoints": [{"url": f"http://127.0.0.1:{b3}", "pool": "cpu", "gpu_arch": "sm_80"}]},
                     "4": {"endpoints": [{"url": f"http://127.0.0.1:{b4}", "pool": "cpu", "gpu_arch": "sm_80"}]}},
    }}})


def _shadow_counts(port: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    counts: dict[str, int] = {}
    for outcome, value in re.findall(r'grayroute_shadow_total\{[^}]*outcome="(\w+)"\} ([0-9.e+]+)', text):
        counts[outcome] = counts.get(outcome, 0) + int(float(value))
    return counts


def _compare_cpu_us(repeat: int = 2000) -> dict[str, float]:
    """Median of 5 rounds: CPU per compared 1x1000 FP32 response, JSON and binary (as bench_parity)."""
    rng = np.random.default_rng(1)
    primary = rng.random(ELEMENTS, dtype=np.float32)
    shadow = (primary + rng.normal(0, 1e-3, ELEMENTS)).astype(np.float32)
    result = {}
    for name, encode in (("json", json_answer), ("binary", binary_answer)):
        a, b = encode(primary), encode(shadow)
        recorder = ParityRecorder()
        key = ("m", "4", "3", "sm_80", "sm_80")
        rounds = []
        for _ in range(5):
            started = time.process_time()
            for _ in range(repeat):
                recorder.compare(key, a, b)
            rounds.append((time.process_time() - started) / repeat * 1e6)
        result[name] = statistics.median(rounds)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=1000, help="requests per second, paced")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one round")
    parser.add_argument("--rounds", type=int, default=8, help="rounds per mode, alternating ABBA")
    parser.add_argument("--percent", type=float, default=10.0, help="the shadow's share of users")
    args = parser.parse_args()
    python = sys.executable
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAYROUTE_")}
    load_start = os.getloadavg()
    defaults = RouterSettings()
    rows: list[tuple[int, str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="grayroute-bench-shadow-") as work, processes() as procs:
        b3, b4 = free_port(), free_port()
        for port, version in ((b3, "3"), (b4, "4")):
            procs.start(python, "-m", "tests.router.kserve", "--port", str(port), "--version", version,
                        "--output-elements", str(ELEMENTS))
        wait_for_port(b3)
        wait_for_port(b4)
        routers: dict[str, tuple[int, int]] = {}
        for mode, percent in (("no shadow", 0.0), (f"{args.percent:g}% shadow", args.percent)):
            snapshot = Path(work) / f"{len(routers)}.json"
            snapshot.write_bytes(_snapshot(b3, b4, percent))
            port = free_port()
            router = procs.start(python, "-m", "router", "--port", str(port), "--workers", "1",
                                 "--snapshot-file", str(snapshot), "--log-level", "warning", env=env)
            wait_for_port(port)
            routers[mode] = (port, router.pid)
        time.sleep(1.0)
        plain, shadowed = list(routers)
        for port, _ in routers.values():
            paced(port, args.rate, 1.0)  # warm-up: connections, the shadow router's numpy import
        before = _shadow_counts(routers[shadowed][0])
        order = [plain, shadowed, shadowed, plain]
        for i in range(args.rounds * 2):
            mode = order[i % 4]
            port, pid = routers[mode]
            cpu = cpu_seconds(pid)
            result = paced(port, args.rate, args.seconds)
            time.sleep(0.3)  # mirrors started in the round finish inside it, not in the next round
            result["cpu_us"] = (cpu_seconds(pid) - cpu) / max(result["n"], 1) * 1e6
            rows.append((i + 1, mode, result))
            print(f"  round {i + 1:2d} {mode:<12} p50 {result['p50_ms']:.3f} ms  p99 {result['p99_ms']:.3f} ms  "
                  f"{int(result['n'])} answers  router {result['cpu_us']:.0f} µs CPU/req", file=sys.stderr)
        after = _shadow_counts(routers[shadowed][0])
    compare = _compare_cpu_us()
    load_end = os.getloadavg()

    expected = int(args.rate * args.seconds)
    print()
    print(f"machine: {os.cpu_count()} cores ({platform.machine()}), load average {load_start[0]:.1f} at start, "
          f"{load_end[0]:.1f} at end (other jobs share the cores); Python {platform.python_version()}; "
          "client, routers and backends on the same cores")
    print(f"paced open loop at {args.rate} req/s, {args.seconds:g} s per round, {args.rounds} rounds per mode in "
          f"ABBA order; backends answer 1x{ELEMENTS} FP32 JSON ({ELEMENTS * 9 // 1024} KiB)")
    print()
    print(f"{'mode':<14} {'p50 ms':>8} {'p99 ms':>8} {'p50 range':>16} {'p99 range':>16} {'answers/round':>14} "
          f"{'router µs CPU/req':>18}")
    summary: dict[str, dict[str, float]] = {}
    for mode in (plain, shadowed):
        mine = [r for _, m, r in rows if m == mode]
        p50s, p99s = [r["p50_ms"] for r in mine], [r["p99_ms"] for r in mine]
        summary[mode] = {"p50": statistics.median(p50s), "p99": statistics.median(p99s),
                         "cpu": statistics.median(r["cpu_us"] for r in mine)}
        print(f"{mode:<14} {summary[mode]['p50']:>8.3f} {summary[mode]['p99']:>8.3f} "
              f"{min(p50s):>7.3f}–{max(p50s):<7.3f} {min(p99s):>7.3f}–{max(p99s):<7.3f} "
              f"{statistics.median(r['n'] for r in mine):>8.0f}/{expected:<5d} {summary[mode]['cpu']:>18.0f}")
    print()
    print(f"shadow - no shadow (medians): p50 {summary[shadowed]['p50'] - summary[plain]['p50']:+.3f} ms, "
          f"p99 {summary[shadowed]['p99'] - summary[plain]['p99']:+.3f} ms, "
          f"router CPU {summary[shadowed]['cpu'] - summary[plain]['cpu']:+.0f} µs/req")
    counts = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    sent = expected * args.rounds
    print(f"the shadowed router in its rounds: {counts.get('mirrored', 0)} mirrored "
          f"({100 * counts.get('mirrored', 0) / sent:.1f}% of {sent} requests), {counts.get('compared', 0)} compared, "
          f"{counts.get('dropped', 0)} dropped, {counts.get('errors', 0)} errors, {counts.get('timeouts', 0)} timeouts")
    bound = defaults.shadow_max_inflight * 3 * defaults.shadow_max_bytes
    print(f"mirror memory bound (defaults): {defaults.shadow_max_inflight} in flight x 3 x "
          f"{defaults.shadow_max_bytes // 1024} KiB (request, primary answer, shadow answer, each at most "
          f"--shadow-max-bytes) = {bound / 2**20:.0f} MiB")
    print(f"CPU per compared 1x{ELEMENTS} FP32 response (in process, median of 5): "
          f"JSON {compare['json']:.0f} µs, binary {compare['binary']:.0f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
