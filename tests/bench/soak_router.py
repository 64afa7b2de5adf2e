"""Router soak: a steady load while backends, the control plane and Redis go away and come back.

A script, not a test. Everything runs on 127.0.0.1 and stops by itself:

    python -m tests.bench.soak_router [--duration 600] [--rate 100]

The parts are real: the control plane (``grayroute serve`` on an SQLite file, with
Redis), a Redis server with an append-only file (so a restart keeps the stats it
holds), one router process, and three slow-accepting backends
(``tests.router.slow_backend``: listen backlog 5, 2 ms per answer) serving a
90/10 canary, the stable version on two of them. An open-loop generator sends
``--rate`` infer requests a second, each user with its own ``x-user-id``.

Schedule (D = duration): every minute from 30 s one backend is killed (SIGKILL)
and started again 10 s later, in turn; at 0.4 D the control plane stops for 20 s
and Redis for the middle 10 s of that (both down: stats reports must spool),
each restarted on its port.

Printed at the end: requests sent, answers by status and cause, the router's RSS
and open file descriptors at start (after a 10 s warm-up) and at the end (1 s
before the load stops; the clients hold up to 64 connections), its
retry / shed / health counters, and whether the control plane's merged stats
count every request the router answered (none lost while both were down).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from tests.router.slow_backend import SlowBackend
from tests.services import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "gr_soak_admin_token_0123456789abcdef"
ROUTER = "gr_soak_router_token_0123456789abcdef"
MODEL = "resnet50"


class Redis:
    """redis-server with an append-only file: a restart keeps what it held, as a production one would."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        server = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.process = subprocess.Popen(
            [server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


class ControlPlane:
    def __init__(self, directory: Path, redis_url: str) -> None:
        self.port = free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GRAYROUTE_")}
        self.env.update({
            "GRAYROUTE_DATABASE_URL": f"sqlite+aiosqlite:///{directory / 'grayroute.db'}",
            "GRAYROUTE_REDIS_URL": redis_url,
            "GRAYROUTE_SECRET_KEY": "soak-secret-key-0123456789",
            "GRAYROUTE_BOOTSTRAP_ADMIN_TOKEN": ADMIN,
            "GRAYROUTE_ROUTER_TOKEN": ROUTER,
            "GRAYROUTE_LOG_LEVEL": "WARNING",
        })
        self.log = directory / "control-plane.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "control_plane.cli", "serve", "--port", str(self.port)],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"control plane did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


def seed(cp: ControlPlane, stable: list[str], canary: list[str]) -> None:
    """A pool, a model, two versions on the backends, and a 90/10 canary, through the API."""
    with httpx.Client(base_url=cp.url + "/api/v1", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30) as api:
        def ok(response: httpx.Response) -> None:
            if response.status_code >= 300:
                raise RuntimeError(f"{response.request.method} {response.request.url}: {response.text}")

        ok(api.put("/pools/cpu", json={"gpu_arch": "sm_80", "kind": "external", "trt_version": "10.3"}))
        ok(api.post("/models", json={"name": MODEL}))
        for version, urls in (("3", stable), ("4", canary)):
            ok(api.post(f"/models/{MODEL}/versions", json={
                "version": version, "precision": "fp16", "trt_version": "10.3",
                "engines": [{"gpu_arch": "sm_80", "uri": f"s3://engines/{MODEL}/{version}.plan",
                             "sha256": "a" * 64, "size_bytes": 1 << 20}]}))
            ok(api.put(f"/models/{MODEL}/versions/{version}/endpoints", json={"pool": "cpu", "urls": urls}))
        etag = api.get(f"/models/{MODEL}/traffic").headers["etag"]
        ok(api.put(f"/models/{MODEL}/traffic", headers={"If-Match": etag}, json={
            "default_version": "3", "reason": "soak", "rules": [],
            "splits": [{"version": "3", "weight": 90}, {"version": "4", "weight": 10}]}))


def usage(pid: int) -> tuple[float, int]:
    """(RSS in MiB, open file descriptors) of a process."""
    with open(f"/proc/{pid}/status") as status:
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return rss / 1024, len(os.listdir(f"/proc/{pid}/fd"))


def scrape(url: str) -> dict[str, float]:
    samples: dict[str, float] = {}
    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def total(samples: dict[str, float], prefix: str, *, without: str | None = None) -> float:
    return sum(v for k, v in samples.items() if k.startswith(prefix) and (without is None or without not in k))


async def load(router_url: str, rate: float, duration: float, outcomes: Counter[str],
               events: list[tuple[float, str]], actions: list[tuple[float, str, Callable[[], object]]]) -> int:
    """Open loop at ``rate``; runs ``actions`` (at, name, callable) on the side; returns requests sent."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = 0
    pending: set[asyncio.Task[Any]] = set()
    # 64 connections, like a bounded client fleet: the router's descriptors then measure the router
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64),
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:
        async def one(user: int) -> None:
            try:
                async with session.post(router_url + f"/v2/models/{MODEL}/infer", json={"inputs": []},
                                        headers={"x-user-id": f"user-{user}"}) as response:
                    body = await response.read()
                    if response.status == 200:
                        outcomes["200"] += 1
                    else:
                        code = body.split(b'"code":"', 1)[-1].split(b'"', 1)[0].decode(errors="replace")
                        outcomes[f"{response.status} {code}"] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcomes[f"client {type(exc).__name__}"] += 1

        todo = sorted(actions, key=lambda a: a[0])
        while (now := loop.time() - start) < duration:
            while todo and todo[0][0] <= now:
                _, name, action = todo.pop(0)
                events.append((now, name))
                print(f"  {now:6.1f} s  {name}", file=sys.stderr)
                # on the side: a restart takes seconds, and the load must stay steady meanwhile
                side: asyncio.Task[object] = loop.create_task(asyncio.to_thread(action))
                pending.add(side)
                side.add_done_callback(pending.discard)
            due = int(now * rate)
            while sent < due:
                task = loop.create_task(one(sent))
                pending.add(task)
                task.add_done_callback(pending.discard)
                sent += 1
            await asyncio.sleep(0.002)
        await asyncio.gather(*pending)
    return sent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second (default 100)")
    parser.add_argument("--stats-interval", type=float, default=5.0, help="router stats period (default 5)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="grayroute-soak-"))
    load_average = os.getloadavg()
    backends = [SlowBackend(free_port(), v) for v in ("3", "3", "4")]
    redis = Redis(work)
    router: subprocess.Popen[bytes] | None = None
    cp: ControlPlane | None = None
    try:
        redis.start()
        cp = ControlPlane(work, redis.url)
        cp.start()
        for backend in backends:
            backend.start()
        seed(cp, [b.url for b in backends[:2]], [backends[2].url])
        router_port = free_port()
        router_url = f"http://127.0.0.1:{router_port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRAYROUTE_")}
        env.update({"GRAYROUTE_TOKEN": ROUTER, "GRAYROUTE_REDIS_URL": redis.url})
        router_log = open(work / "router.log", "ab")  # noqa: SIM115 - open for the router's whole life
        router = subprocess.Popen(
            [sys.executable, "-m", "router", "--port", str(router_port), "--control-plane", cp.url,
             "--snapshot-file", str(work / "snapshot.json"), "--stats-interval", str(args.stats_interval),
             "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=router_log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(router_url + "/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("router not ready")
            time.sleep(0.1)

        duration = args.duration
        figures: dict[str, tuple[float, int]] = {}
        spooled: list[float] = []
        actions: list[tuple[float, str, Callable[[], object]]] = [
            (min(10.0, duration), "start figures", lambda: figures.__setitem__("start", usage(router.pid))),
            (duration - 1.0, "end figures", lambda: figures.__setitem__("end", usage(router.pid))),
        ]
        for i, at in enumerate(range(30, int(duration) - 10, 60)):
            backend = backends[i % len(backends)]
            actions.append((at, f"kill backend {backend.port} (version {backend.version})", backend.kill))
            actions.append((at + 10, f"restart backend {backend.port}", backend.start))
        outage = 0.4 * duration
        actions += [
            (outage, "stop the control plane", cp.stop),
            (outage + 5, "stop Redis (both down: reports spool)", redis.stop),
            (outage + 14, "spooled reports",
             lambda: spooled.append(scrape(router_url).get("grayroute_stats_reports_spooled", 0.0))),
            (outage + 15, "start Redis", redis.start),
            (outage + 20, "start the control plane", cp.start),
        ]
        pid = router.pid
        for at in range(60, int(duration), 60):
            actions.append((at + 0.5, "router RSS MiB / open fds",
                            lambda: print("           {:.1f} / {}".format(*usage(pid)), file=sys.stderr)))

        outcomes: Counter[str] = Counter()
        events: list[tuple[float, str]] = []
        print(f"soak: {duration:.0f} s at {args.rate:.0f} req/s…", file=sys.stderr)
        sent = asyncio.run(load(router_url, args.rate, duration, outcomes, events, actions))
        after = usage(router.pid)
        time.sleep(args.stats_interval + 2)  # the last window reaches Redis
        samples = scrape(router_url)
        answered = total(samples, "grayroute_requests_total{", without='version=""')
        with httpx.Client(base_url=cp.url + "/api/v1", headers={"Authorization": f"Bearer {ADMIN}"}) as api:
            stats = api.get(f"/models/{MODEL}/stats", params={"window": 3600}).json()
        merged = sum(v["requests"] for v in stats["versions"])
    finally:
        if router is not None and router.poll() is None:
            router.terminate()
            router.wait(15)
        if cp is not None:
            cp.stop()
        redis.stop()
        for backend in backends:
            backend.kill()

    start: tuple[float, int] = figures.get("start", (0.0, 0))
    end = figures.get("end", after)
    errors = {k: v for k, v in outcomes.items() if k != "200"}
    print()
    print(f"machine: {os.cpu_count()} cores, {platform.machine()}, load average {load_average[0]:.1f} at start; "
          f"Python {platform.python_version()}; {duration:.0f} s at {args.rate:.0f} req/s")
    print(f"requests sent: {sent}, answered 200: {outcomes['200']}, errors: {sum(errors.values())}")
    for cause, count in sorted(errors.items(), key=lambda kv: -kv[1]):
        print(f"  {cause}: {count}")
    print(f"router RSS: {start[0]:.1f} MiB at start, {end[0]:.1f} MiB at end ({end[0] - start[0]:+.1f} MiB)")
    print(f"router open fds: {start[1]} at start, {end[1]} at end ({end[1] - start[1]:+d}); "
          f"{after[1]} once the clients closed their connections")
    print(f"retries: {total(samples, 'grayroute_retries_total'):.0f}, "
          f"denied by the budget: {total(samples, 'grayroute_retries_denied_total'):.0f}, "
          f"shed: {total(samples, 'grayroute_shed_total'):.0f}")
    for event in ("down", "readmitted", "ejected", "ejection_capped", "connect_timeout"):
        occurred = samples.get('grayroute_backend_events_total{event="%s"}' % event, 0.0)
        print(f"  backend {event}: {occurred:.0f}")
    print(f"stats reports spooled while both were down: {spooled[0] if spooled else 0:.0f}, "
          f"dropped: {samples.get('grayroute_stats_reports_dropped_total', 0):.0f}")
    print(f"requests the router answered from a version: {answered:.0f}; "
          f"counted by the control plane's merged stats: {merged}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
