"""Router benchmark: throughput and latency against nginx, decision time, snapshot propagation.

A script, not a test. Everything runs on 127.0.0.1 and stops by itself:

    python -m tests.bench.bench_router [--duration 10] [--connections 32] [--workers 1 2]

What it measures, on one machine (the load generator shares the CPU with what it loads):

- throughput: ``wrk`` (a Lua script POSTs a small KServe v2 JSON body with a varying
  ``x-user-id``) against one backend directly, nginx ``split_clients`` 95/5 over two
  backends, and the grayroute router with the same 95/5 split;
- added latency at a fixed 1,000 req/s: wrk2 is not available, so a small open-loop
  paced generator (asyncio + uvloop, keep-alive connections, latency timed from each
  request's send) drives direct, nginx and router in turn; added = router - direct;
- the in-process routing decision: ``decide`` with 3 versions and 3 rules;
- the in-process accounting of one answered request: the backend's (pool, gpu_arch)
  lookup and ``Recorder.observe`` (assigned and serving version, pool, architecture);
- propagation: 4 router processes subscribed to a real Redis; the time from a
  published traffic change (SET + PUBLISH) until each router serves the new revision.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson

from router.routing import ModelRouting, Rule, allocate, bucket_counts, decide
from router.upstream import Backend
from tests.services import RedisServer, free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
BODY = '{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}'
PATH = "/v2/models/resnet50/infer"

_WRK_TEMPLATE = """
wrk.method = "POST"
wrk.body = '%s'
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  wrk.headers["x-user-id"] = "user-" .. n .. "-" .. math.random(1000000)
  return wrk.format(nil, "%s")
end
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
               + summary.errors.status + summary.errors.timeout
  io.write(string.format("JSON {\\"requests\\": %%d, \\"seconds\\": %%f, \\"errors\\": %%d, \\"p50\\": %%d, \\"p99\\": %%d}\\n",
    summary.requests, summary.duration / 1e6, errors, latency:percentile(50), latency:percentile(99)))
end
"""


def wrk_script(body: str, path: str) -> str:
    """The Lua script: POST ``body`` to ``path`` with a new x-user-id each request; prints a JSON summary."""
    return _WRK_TEMPLATE % (body, path)  # noqa: UP031 - the Lua text is full of braces


WRK_SCRIPT = wrk_script(BODY, PATH)

NGINX_CONF = """
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
daemon off;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fcgi;
  uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  upstream v3 {{ server 127.0.0.1:{b3}; keepalive 128; }}
  upstream v4 {{ server 127.0.0.1:{b4}; keepalive 128; }}
  split_clients "resnet50${{http_x_user_id}}" $version {{ 95% v3; * v4; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{ proxy_pass http://$version; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
"""


class Processes:
    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, *cmd: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.started.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def stop_all(self) -> None:
        for process in reversed(self.started):
            self.stop(process)


@contextmanager
def processes() -> Iterator[Processes]:
    procs = Processes()
    try:
        yield procs
    finally:
        procs.stop_all()


def snapshot(revision: int, b3: int, b4: int, canary: float = 5.0,
             previous: list[tuple[int, int, str]] | None = None, shadow: float = 0.0) -> bytes:
    allocation = allocate(previous, bucket_counts([("3", 100 - canary), ("4", canary)]))
    return orjson.dumps({"revision": revision, "models": {"resnet50": {
        "salt": "resnet50", "default_version": "3",
        **({"shadow": {"version": "4", "percent": shadow}} if shadow else {}),
        "splits": [{"version": "3", "weight": 100 - canary}, {"version": "4", "weight": canary}],
        "allocation": [list(r) for r in allocation],
        "versions": {"3": {"endpoints": [{"url": f"http://127.0.0.1:{b3}", "pool": "cpu", "gpu_arch": "sm_80"}]},
                     "4": {"endpoints": [{"url": f"http://127.0.0.1:{b4}", "pool": "cpu", "gpu_arch": "sm_80"}]}},
    }}})


def cpu_seconds(root: int) -> float:
    """CPU time used so far by ``root`` and its descendants (all threads)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    family, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in family:
                family.add(child)
                frontier.append(child)
    return sum(times.get(pid, 0.0) for pid in family)


def wrk(port: int, script: Path, duration: int, connections: int, threads: int,
        server: int | None = None) -> dict[str, float]:
    before = cpu_seconds(server) if server else 0.0
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "-s", str(script), f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, timeout=duration + 30, check=True,
    ).stdout
    used = cpu_seconds(server) - before if server else 0.0
    line = next(line for line in out.splitlines() if line.startswith("JSON "))
    data = json.loads(line[5:])
    return {"rps": data["requests"] / data["seconds"], "p50_ms": data["p50"] / 1000, "p99_ms": data["p99"] / 1000,
            "errors": data["errors"], "cpu_us": used / max(data["requests"], 1) * 1e6}


async def _paced(port: int, rate: int, seconds: float) -> list[float]:
    """Open-loop load at ``rate`` req/s; returns latencies in ms (send to full response)."""
    # a load generator queues rather than sheds: every request is sent and timed
    backend = Backend(f"http://127.0.0.1:{port}", max_connections=256, max_pending=1_000_000, queue_timeout=60.0)
    body = BODY.encode()
    latencies: list[float] = []
    loop = asyncio.get_running_loop()

    async def one(i: int) -> None:
        headers = [(b"content-type", b"application/json"), (b"x-user-id", b"paced-%d" % i)]
        started = time.perf_counter()
        response = await backend.request("POST", PATH.encode(), headers, body, 10.0)
        if response.status == 200:
            latencies.append((time.perf_counter() - started) * 1000)

    # warm the pool
    await asyncio.gather(*(one(-i) for i in range(1, 20)))
    latencies.clear()
    tasks = []
    start = loop.time()
    total = int(rate * seconds)
    sent = 0
    while sent < total:
        due = min(total, int((loop.time() - start) * rate) + 1)
        while sent < due:
            tasks.append(loop.create_task(one(sent)))
            sent += 1
        await asyncio.sleep(0.0005)
    await asyncio.gather(*tasks)
    return latencies


def paced(port: int, rate: int, seconds: float) -> dict[str, float]:
    import gc

    import uvloop

    gc.collect()
    gc.disable()  # the generator's own pauses would land in every target's tail
    try:
        latencies = uvloop.run(_paced(port, rate, seconds))
    finally:
        gc.enable()
    latencies.sort()
    return {"p50_ms": statistics.median(latencies), "p99_ms": latencies[int(0.99 * len(latencies)) - 1],
            "n": len(latencies)}


def decision_time(rounds: int = 15, per_round: int = 100_000) -> float:
    """Best of ``rounds`` (a shared machine only ever adds time) of ``per_round`` decisions, in us."""
    allocation = allocate(None, bucket_counts([("3", 90), ("4", 5), ("5", 5)]))
    rules = (Rule("qa", "5", "x-tenant", frozenset({"qa"})), Rule("ml-team", "4", "x-team", frozenset({"ml"})),
             Rule("beta", "4", None, frozenset({"vip-1", "vip-2"})))
    model = ModelRouting.build(name="resnet50", key_header="x-user-id", salt="resnet50", anonymous="weighted",
                               default_version="3", rules=rules, allocation=allocation)
    ready = frozenset({"3", "4", "5"})
    headers = [{"x-user-id": f"user-{i}"} for i in range(1000)]
    import gc

    gc.collect()
    gc.freeze()  # as the router does after start: collections then skip the long-lived heap
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(per_round // len(headers)):
            for h in headers:
                decide(model, h, ready)
        best = min(best, (time.perf_counter() - started) / per_round)
    return best * 1e6


def accounting_time(rounds: int = 15, per_round: int = 100_000) -> float:
    """Best of ``rounds`` of ``per_round`` accounted requests (the per-request work after the answer), in us."""
    return asyncio.run(_accounting_time(rounds, per_round))


async def _accounting_time(rounds: int, per_round: int) -> float:
    import gc

    from router.metrics import NOWHERE, Recorder
    from router.table import VersionGroup

    groups = {v: VersionGroup(v, [Backend(f"http://127.0.0.1:{9000 + i}/{v}") for i in range(2)],
                              [("a100", "sm_80"), ("h100", "sm_90")]) for v in ("3", "4")}
    recorder = Recorder()
    # 95/5 split, two pools each, 1% fallbacks to the default
    requests = []
    for i in range(1000):
        served = "4" if i % 20 == 0 else "3"
        chosen = "4" if i % 100 == 1 else None
        requests.append((groups[served], groups[served].backends[i % 2], served, chosen, 0.0012 + (i % 7) / 1000))
    gc.collect()
    gc.freeze()
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(per_round // len(requests)):
            for group, backend, version, chosen, seconds in requests:
                where = group.where.get(backend, NOWHERE)
                recorder.observe("resnet50", chosen or version, version, where, "split", 200, seconds)
        best = min(best, (time.perf_counter() - started) / per_round)
    gc.unfreeze()
    return best * 1e6


async def _propagation(ports: list[int], redis_url: str, b3: int, b4: int, rounds: int) -> list[float]:
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url)
    pollers = [Backend(f"http://127.0.0.1:{port}") for port in ports]  # the lean client: polling costs little
    times: list[float] = []
    previous = [tuple(r) for r in orjson.loads(snapshot(1, b3, b4))["models"]["resnet50"]["allocation"]]

    async def until(poller: Backend, revision: int, published: float) -> float:
        while True:
            response = await poller.request("GET", b"/v2/health/ready", [], b"", 5.0)
            if response.status == 200 and orjson.loads(response.body)["revision"] >= revision:
                return (time.perf_counter() - published) * 1000
            if time.perf_counter() - published > 10:
                raise TimeoutError(f"router at {poller.url} never served revision {revision}")

    for i in range(rounds):
        revision = 100 + i
        canary = 5.0 + (i % 10)
        raw = snapshot(revision, b3, b4, canary, previous)  # type: ignore[arg-type]
        previous = [tuple(r) for r in orjson.loads(raw)["models"]["resnet50"]["allocation"]]
        published = time.perf_counter()  # what the control plane does on a change: store, then announce
        await client.set("grayroute:snapshot", raw)
        await client.publish("grayroute:snapshot", str(revision))
        times += await asyncio.gather(*(until(p, revision, published) for p in pollers))
        await asyncio.sleep(0.05)
    await client.aclose()
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="router worker counts to measure")
    parser.add_argument("--compare-uvicorn", type=int, choices=[0, 1], default=1,
                        help="also measure the router on uvicorn (1 worker)")
    parser.add_argument("--rate", type=int, default=1000, help="req/s for the added-latency run")
    parser.add_argument("--paced-seconds", type=float, default=4.0)
    parser.add_argument("--paced-rounds", type=int, default=3, help="interleaved paced runs; medians are shown")
    parser.add_argument("--rounds", type=int, default=30, help="propagation rounds (4 routers each)")
    parser.add_argument("--shadow", type=float, default=0.0, metavar="PERCENT",
                        help="routers also mirror this percent of requests to version 4 (shadow traffic)")
    args = parser.parse_args()
    for tool in ("wrk",):
        if shutil.which(tool) is None:
            print(f"{tool} not found", file=sys.stderr)
            return 1
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    python = sys.executable
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAYROUTE_")}
    work = Path(tempfile.mkdtemp(prefix="grayroute-bench-"))
    load = os.getloadavg()
    rows: list[tuple[str, dict[str, float]]] = []
    paced_rows: list[tuple[str, dict[str, float]]] = []
    try:
        script = work / "post.lua"
        script.write_text(WRK_SCRIPT)
        with processes() as procs:
            b3, b4 = free_port(), free_port()
            backend3 = procs.start(python, "-m", "tests.router.kserve", "--port", str(b3), "--version", "3")
            procs.start(python, "-m", "tests.router.kserve", "--port", str(b4), "--version", "4")
            wait_for_port(b3)
            wait_for_port(b4)
            snap = work / "snapshot.json"
            snap.write_bytes(snapshot(1, b3, b4, shadow=args.shadow))
            nginx_port = free_port()
            (work / "nginx.conf").write_text(NGINX_CONF.format(dir=work, b3=b3, b4=b4, port=nginx_port,
                                                                workers=os.cpu_count() or 2))
            nginx_process = procs.start(nginx, "-c", str(work / "nginx.conf"), "-p", str(work))
            wait_for_port(nginx_port)

            def measure(name: str, port: int, server: int) -> None:
                wrk(port, script, 2, args.connections, args.threads)  # warm-up
                rows.append((name, wrk(port, script, args.duration, args.connections, args.threads, server)))
                print(f"  {name}: {rows[-1][1]['rps']:.0f} req/s, {rows[-1][1]['cpu_us']:.1f} us CPU/req", file=sys.stderr)

            print("throughput (wrk)…", file=sys.stderr)
            measure("direct to backend", b3, backend3.pid)
            measure("nginx split_clients", nginx_port, nginx_process.pid)
            router_ports: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
            variants = [(w, "lean") for w in args.workers] + [(1, "uvicorn")] * args.compare_uvicorn
            for workers, http in variants:
                port = free_port()
                router = procs.start(python, "-m", "router", "--port", str(port), "--workers", str(workers),
                                     "--http", http, "--snapshot-file", str(snap), "--log-level", "warning", env=env)
                wait_for_port(port)
                time.sleep(1.0 + workers * 0.5)  # every worker bound and loaded
                name = f"grayroute router, {workers} worker{'s' if workers > 1 else ''}"
                if http != "lean":
                    name += f" ({http})"
                measure(name, port, router.pid)
                router_ports[name] = (port, router)

            print(f"added latency at {args.rate} req/s (paced)…", file=sys.stderr)
            targets = [("direct to backend", b3), ("nginx split_clients", nginx_port)] + [
                (name, p) for name, (p, _) in router_ports.items() if "(" not in name]
            runs: dict[str, list[dict[str, float]]] = {name: [] for name, _ in targets}
            for _ in range(args.paced_rounds):  # interleaved, so background noise hits every target alike
                for name, port in targets:
                    runs[name].append(paced(port, args.rate, args.paced_seconds))
            for name, _ in targets:
                paced_rows.append((name, {k: statistics.median(r[k] for r in runs[name]) for k in ("p50_ms", "p99_ms")}))
            for _, router in router_ports.values():
                procs.stop(router)

            print("decision and accounting time…", file=sys.stderr)
            decision_us = decision_time()
            accounting_us = accounting_time()

            print("propagation (4 routers, real Redis)…", file=sys.stderr)
            redis = RedisServer.start()
            try:
                ports = [free_port() for _ in range(4)]
                for port in ports:
                    procs.start(python, "-m", "router", "--port", str(port), "--snapshot-file", str(snap),
                                "--log-level", "warning", env={**env, "GRAYROUTE_REDIS_URL": redis.url})
                for port in ports:
                    wait_for_port(port)
                time.sleep(1.5)  # subscribed
                import uvloop

                propagation = uvloop.run(_propagation(ports, redis.url, b3, b4, args.rounds))
            finally:
                redis.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    nginx_rps = next(r["rps"] for name, r in rows if name.startswith("nginx"))
    print()
    print(f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
          f"load average {load[0]:.1f} at start; Python {platform.python_version()}; wrk -t{args.threads} -c{args.connections} -d{args.duration}s, "
          "95/5 split, load generator on the same cores")
    print()
    print(f"{'target':<38} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs nginx':>9} {'CPU us/req':>11} {'errors':>7}")
    for name, r in rows:
        print(f"{name:<38} {r['rps']:>9.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
              f"{r['rps'] / nginx_rps:>8.2f}x {r['cpu_us']:>11.1f} {int(r['errors']):>7}")
    print("(CPU us/req: CPU time of that server's processes only, per request: steady even on a busy machine)")
    print()
    direct = paced_rows[0][1]
    print(f"at {args.rate} req/s, paced open loop ({args.paced_seconds:.0f} s each, median of {args.paced_rounds} "
          "interleaved runs)")
    print(f"{'target':<38} {'p50 ms':>8} {'p99 ms':>8} {'added p50':>10} {'added p99':>10}")
    for name, r in paced_rows:
        print(f"{name:<38} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} "
              f"{r['p50_ms'] - direct['p50_ms']:>10.3f} {r['p99_ms'] - direct['p99_ms']:>10.3f}")
    print()
    print(f"routing decision (3 versions, 3 rules, in process): {decision_us * 1000:.0f} ns")
    print(f"accounting one request (assigned + served version, pool, gpu_arch; in process): "
          f"{accounting_us * 1000:.0f} ns")
    print(f"snapshot propagation to 4 routers via Redis ({len(propagation)} samples): "
          f"p50 {percentile(propagation, 0.5):.1f} ms, p99 {percentile(propagation, 0.99):.1f} ms, "
          f"max {max(propagation):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
