"""The local target (embedded default): one engine-server process per deployment replica.

Each replica is ``python -m control_plane.reconciler.engine_server`` on a free
loopback port. A process that exits is restarted on the next pass (with a
per-process backoff, so a crash loop does not spin); stopping the target
stops every process, and each engine server also exits by itself if the
reconciler dies, so none is orphaned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from control_plane.reconciler.desired import DeploymentKey, DesiredDeployment
from control_plane.reconciler.engine_server import Fault
from control_plane.reconciler.targets import Observed, SyncReport, Wake

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
_STARTUP_SECONDS = 60.0
_STOP_GRACE_SECONDS = 5.0
_PROBE_FAILURE_THRESHOLD = 3


def free_port() -> int:
    # The port is free now; if another process grabs it first, the server
    # exits and is restarted on a new port.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class _Replica:
    """One engine-server process and what it was started for."""

    fingerprint: tuple[str, str, str]
    process: asyncio.subprocess.Process
    port: int
    started: float
    log_path: Path
    ready: bool = False
    probe_failures: int = 0
    withdrawn: bool = False  # was ready, then failed enough probes to leave the routers
    watchers: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process.returncode is None


@dataclass
class _History:
    restarts: int = 0
    not_before: float = 0.0


class LocalTarget:
    kind = "local"

    def __init__(self, *, state_dir: Path, python: str = sys.executable, probe_timeout: float = 1.0,
                 faults: Mapping[str, Fault] | None = None) -> None:
        self.state_dir = state_dir
        # Injected faults by "version" or "version@pool" (the more specific wins); for demos and tests.
        self.faults = dict(faults or {})
        self.python = python
        self.probe_timeout = probe_timeout
        self._replicas: dict[tuple[str, int], _Replica] = {}
        self._history: dict[tuple[str, int], _History] = {}
        self._wake: Wake | None = None
        self._closing = False
        self._http: httpx.AsyncClient | None = None

    # ------------------------------------------------------------ Target

    async def start(self, wake: Wake) -> None:
        self._wake = wake
        self._http = httpx.AsyncClient(timeout=self.probe_timeout, trust_env=False)

    async def sync(self, desired: Sequence[DesiredDeployment]) -> SyncReport:
        if self._http is None:
            await self.start(lambda: None)
        report = SyncReport()
        wanted: dict[tuple[str, int], DesiredDeployment] = {
            (d.name, i): d for d in desired for i in range(max(1, d.replicas))
        }
        for slot in [s for s in self._replicas if s not in wanted]:
            await self._stop(self._replicas.pop(slot))
            self._history.pop(slot, None)
            report.writes += 1
        now = time.monotonic()
        for slot, d in wanted.items():
            current = self._replicas.get(slot)
            fingerprint = (d.model, d.version, d.precision)
            if current is not None and current.running and current.fingerprint == fingerprint:
                continue
            if current is not None:
                if current.running:
                    await self._stop(current)  # started for another engine: replace it
                else:
                    log.warning("engine server %s/%d exited with %s; restarting", d.name, slot[1],
                                current.process.returncode)
                del self._replicas[slot]
            history = self._history.setdefault(slot, _History())
            if now < history.not_before:
                report.transient_errors.append(f"{d.name}/{slot[1]} is crash-looping; restart delayed")
                continue
            try:
                self._replicas[slot] = await self._spawn(slot, d)
            except OSError as exc:
                report.transient_errors.append(f"starting {d.name}/{slot[1]}: {exc}")
                continue
            if current is not None and not current.running:
                history.restarts += 1
                history.not_before = now + min(30.0, 0.5 * 2 ** history.restarts)
            report.writes += 1

        await asyncio.gather(*(self._probe(r) for r in self._replicas.values()))
        by_key: dict[DeploymentKey, list[_Replica]] = {}
        for slot, d in wanted.items():
            replica = self._replicas.get(slot)
            by_key.setdefault(d.key, [])
            if replica is not None:
                by_key[d.key].append(replica)
        for d in desired:
            replicas = by_key.get(d.key, [])
            ready = [r for r in replicas if r.running and r.ready]
            report.observed[d.key] = Observed(
                ready_replicas=len(ready),
                endpoints=tuple(r.url for r in ready),
                applied=bool(replicas),
            )
        return report

    async def close(self) -> None:
        self._closing = True
        replicas, self._replicas = list(self._replicas.values()), {}
        await asyncio.gather(*(self._stop(r) for r in replicas))
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # ------------------------------------------------------------ processes

    def pids(self) -> dict[str, int]:
        """Running processes by ``name/index`` (for tests and diagnostics)."""
        return {f"{s[0]}/{s[1]}": r.process.pid for s, r in self._replicas.items() if r.running}

    async def _spawn(self, slot: tuple[str, int], d: DesiredDeployment) -> _Replica:
        port = free_port()
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{slot[0]}-{slot[1]}.log"
        with open(log_path, "ab") as out:  # noqa: ASYNC230 - a local log file, once per replica start
            process = await asyncio.create_subprocess_exec(
                self.python, "-m", "control_plane.reconciler.engine_server",
                "--model", d.model, "--version", d.version, "--precision", d.precision,
                "--port", str(port), "--host", HOST,
                "--model-dir", str(self.state_dir / "models"),
                "--parent-pid", str(os.getpid()),
                *self._fault_for(d).arguments(),
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
            )
        replica = _Replica((d.model, d.version, d.precision), process, port, time.monotonic(), log_path)
        log.info("engine server %s/%d started: pid %d on port %d (log %s)", slot[0], slot[1], process.pid, port,
                 log_path)
        replica.watchers = [
            asyncio.create_task(self._on_exit(replica)),
            asyncio.create_task(self._until_ready(replica)),
        ]
        return replica

    def _fault_for(self, d: DesiredDeployment) -> Fault:
        return self.faults.get(f"{d.version}@{d.pool.name}") or self.faults.get(d.version) or Fault()

    async def _on_exit(self, replica: _Replica) -> None:
        await replica.process.wait()
        replica.ready = False
        if not self._closing and self._wake is not None:
            self._wake()  # a crash: look again now rather than at the next resync

    async def _until_ready(self, replica: _Replica) -> None:
        deadline = time.monotonic() + _STARTUP_SECONDS
        while replica.running and time.monotonic() < deadline:
            if await self._ready(replica):
                replica.ready = True
                log.info("engine server %s ready after %.1fs", replica.url, time.monotonic() - replica.started)
                if self._wake is not None:
                    self._wake()  # routable now: publish the endpoint without waiting for a resync
                return
            await asyncio.sleep(0.1)
        if replica.running and not replica.ready:
            log.warning("engine server %s not ready after %.0fs; see %s", replica.url, _STARTUP_SECONDS,
                        replica.log_path)

    async def _ready(self, replica: _Replica) -> bool:
        if self._http is None:
            return False
        try:
            response = await self._http.get(f"{replica.url}/v2/models/{replica.fingerprint[0]}/ready")
        except httpx.HTTPError as exc:
            log.debug("probe of %s failed: %s", replica.url, exc or type(exc).__name__)
            return False
        log.debug("probe of %s: %d", replica.url, response.status_code)
        return response.status_code == 200

    async def _probe(self, replica: _Replica) -> None:
        if not replica.running:
            replica.ready = False
        elif await self._ready(replica):
            if replica.withdrawn:
                log.info("engine server %s ready again after %d failed probes", replica.url, replica.probe_failures)
            replica.ready, replica.probe_failures, replica.withdrawn = True, 0, False
        else:
            # Like a Kubernetes readiness probe's failureThreshold: one slow answer
            # on a busy machine must not withdraw a backend from the routers.
            replica.probe_failures += 1
            if replica.probe_failures >= _PROBE_FAILURE_THRESHOLD:
                if replica.ready:
                    replica.withdrawn = True
                    log.warning("engine server %s failed %d readiness probes in a row; withdrawn from routing",
                                replica.url, replica.probe_failures)
                replica.ready = False

    async def _stop(self, replica: _Replica) -> None:
        for task in replica.watchers:
            task.cancel()
        if replica.running:
            log.info("engine server %s (pid %d) stopping", replica.url, replica.process.pid)
            with contextlib.suppress(ProcessLookupError):
                replica.process.terminate()
            try:
                await asyncio.wait_for(replica.process.wait(), timeout=_STOP_GRACE_SECONDS)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    replica.process.kill()
                await replica.process.wait()

