"""Bursts against slow-accepting backends: no 5xx while a backend lives, fallback when one dies,
fast 503s when all are gone and recovery within a second, retries within their budget, and
load shed (503, Retry-After) only past the connection queue's bound or deadline.

The backends are ``tests.router.slow_backend`` processes (listen backlog 5, 2 ms per
answer); killing one is a SIGKILL, as when an engine crashes.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.router.conftest import RouterProcess, model_spec, router_env, snapshot, start_backend
from tests.router.slow_backend import SlowBackend
from tests.services import free_port

CLIENTS = 64


@dataclass
class Answer:
    status: int
    version: str | None
    route: str | None
    retry_after: str | None
    seconds: float
    done: float  # monotonic time it completed


@pytest.fixture
def slow() -> Iterator[dict[str, SlowBackend]]:
    """Backends by version; every process a test started is killed at the end."""
    started: dict[str, SlowBackend] = {}
    yield started
    for backend in started.values():
        backend.kill()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CLIENTS)) as client:
        yield client


async def _router(routers: list[RouterProcess], tmp_path: Path, spec: dict, *args: str) -> RouterProcess:
    file = tmp_path / "snapshot.json"
    file.write_bytes(snapshot(1, resnet50=spec))
    router = RouterProcess("--snapshot-file", str(file), "--log-level", "warning", *args, env=router_env()).start()
    routers.append(router)
    await router.wait_ready()
    return router


async def _canary_pair(slow: dict[str, SlowBackend], routers: list, tmp_path: Path, *args: str) -> RouterProcess:
    slow["3"] = SlowBackend(free_port(), "3").start()
    slow["4"] = SlowBackend(free_port(), "4").start()
    spec = model_spec({"3": [slow["3"].url], "4": [slow["4"].url]}, [("3", 90), ("4", 10)], default_version="3")
    return await _router(routers, tmp_path, spec, *args)


async def _burst(
    session: aiohttp.ClientSession, router: RouterProcess, total: int, *, first_user: int = 0,
    clients: int = CLIENTS, after: tuple[int, Callable[[], None]] | None = None,
) -> list[Answer]:
    """``total`` infer requests from ``clients`` concurrent clients, each with its own x-user-id."""
    users = iter(range(first_user, first_user + total))
    answers: list[Answer] = []

    async def client() -> None:
        for user in users:
            started = time.monotonic()
            async with session.post(router.url + "/v2/models/resnet50/infer", json={"inputs": []},
                                    headers={"x-user-id": f"user-{user}"}) as response:
                await response.read()
                answers.append(Answer(response.status, response.headers.get("x-grayroute-version"),
                                      response.headers.get("x-grayroute-route"), response.headers.get("retry-after"),
                                      time.monotonic() - started, time.monotonic()))
            if after is not None and len(answers) == after[0]:
                after[1]()

    await asyncio.gather(*(client() for _ in range(clients)))
    return answers


async def _metrics(session: aiohttp.ClientSession, router: RouterProcess) -> dict[str, float]:
    """Every sample on /metrics, by its name and labels as written."""
    async with session.get(router.url + "/metrics") as response:
        text = await response.text()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def _total(samples: dict[str, float], name: str, **labels: str) -> float:
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for k, v in samples.items()
               if re.match(re.escape(name) + r"(\{|$)", k) and all(w in k for w in wanted))


def _errors(answers: list[Answer]) -> list[Answer]:
    return [a for a in answers if a.status >= 500]


async def test_a_burst_gets_no_5xx(slow: dict, routers: list, tmp_path: Path,
                                   session: aiohttp.ClientSession) -> None:
    router = await _canary_pair(slow, routers, tmp_path)
    answers = await _burst(session, router, 4000)
    assert len(answers) == 4000 and _errors(answers) == []
    canary = sum(1 for a in answers if a.version == "4")
    assert 0.05 < canary / 4000 < 0.15  # the 90/10 split held
    samples = await _metrics(session, router)
    # 64 clients, two backends: the pools stayed within their bound and nothing was ejected or shed
    assert 0 < _total(samples, "grayroute_upstream_connections") <= 2 * 64
    assert _total(samples, "grayroute_backend_events_total", event="ejected") == 0
    assert _total(samples, "grayroute_shed_total") == 0


async def test_killed_canary_users_are_answered_by_the_stable_version(
    slow: dict, routers: list, tmp_path: Path, session: aiohttp.ClientSession,
) -> None:
    router = await _canary_pair(slow, routers, tmp_path)
    killed: list[float] = []

    def kill() -> None:
        slow["4"].kill()
        killed.append(time.monotonic())

    answers = await _burst(session, router, 2000, after=(700, kill))
    assert killed and _errors(answers) == []
    after = [a for a in answers if a.done > killed[0] + 0.5]
    assert after and all(a.version == "3" for a in after)
    fallbacks = sum(1 for a in after if a.route == "fallback")
    assert 0.05 < fallbacks / len(after) < 0.15  # the canary's users, and only them
    samples = await _metrics(session, router)
    assert _total(samples, "grayroute_backend_events_total", event="down") >= 1
    assert _total(samples, "grayroute_backends", health="down") == 1


async def test_a_backend_that_hangs_up_without_answering_costs_no_client_an_error(
    slow: dict, routers: list, tmp_path: Path, session: aiohttp.ClientSession,
) -> None:
    """An engine that dies with requests on it closes their connections before a byte of the answer: each
    such request is sent again elsewhere (inference is a pure function of its inputs), within the budget."""
    hung_up = 0

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal hung_up
        try:
            head = await reader.readuntil(b"\r\n\r\n")  # the request arrived, then the process "died"
            hung_up += head.startswith(b"POST")  # not the router's health probes
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.transport.abort()  # a reset, as when the kernel closes a killed process's sockets

    port = free_port()
    server = await asyncio.start_server(hang_up, "127.0.0.1", port)
    try:
        slow["3"] = SlowBackend(free_port(), "3").start()
        spec = model_spec({"3": [slow["3"].url, f"http://127.0.0.1:{port}"]}, [("3", 100)])
        router = await _router(routers, tmp_path, spec)
        # eight clients: the first wave's retries fit the budget's reserve before the backend is ejected
        answers = await _burst(session, router, 400, clients=8)
        assert hung_up > 0 and _errors(answers) == []
        samples = await _metrics(session, router)
        assert _total(samples, "grayroute_retries_total", kind="closed") == hung_up
        assert _total(samples, "grayroute_backend_events_total", event="ejected") >= 1
    finally:
        server.close()


async def test_every_backend_killed_answers_503_fast_and_recovers_within_a_second(
    slow: dict, routers: list, tmp_path: Path, session: aiohttp.ClientSession,
) -> None:
    router = await _canary_pair(slow, routers, tmp_path)
    assert _errors(await _burst(session, router, 300)) == []
    slow["3"].kill()
    slow["4"].kill()
    answers = await _burst(session, router, 300, first_user=1000, clients=16)
    assert {a.status for a in answers} == {503}
    assert all(a.retry_after == "1" for a in answers)
    assert max(a.seconds for a in answers) < 1.0  # no hang: nothing to wait for
    # the stable version comes back on its port: routed to within a second of listening
    slow["3"].start()
    listening = time.monotonic()
    while True:
        async with session.post(router.url + "/v2/models/resnet50/infer", json={"inputs": []},
                                headers={"x-user-id": "user-1"}) as response:
            await response.read()
            if response.status == 200:
                break
        assert time.monotonic() - listening < 1.0, "not routed to within a second of listening again"
        await asyncio.sleep(0.02)
    assert _errors(await _burst(session, router, 200, first_user=2000)) == []


@pytest.fixture
def refusing() -> Iterator[list[str]]:
    """Thirty addresses that refuse connections: ports bound but never listening, held for the test, so
    no other process (the router under test, say) can be given one of them."""
    held = [socket.socket() for _ in range(30)]
    for sock in held:
        sock.bind(("127.0.0.1", 0))
    yield [f"http://127.0.0.1:{sock.getsockname()[1]}" for sock in held]
    for sock in held:
        sock.close()


async def test_retries_never_exceed_the_budget(slow: dict, routers: list, tmp_path: Path,
                                               session: aiohttp.ClientSession, refusing: list[str]) -> None:
    """A version whose pool died but for one backend: every request that picks a dead one wants a retry."""
    slow["3"] = SlowBackend(free_port(), "3").start()
    dead = refusing
    router = await _router(routers, tmp_path, model_spec({"3": [slow["3"].url, *dead]}, [("3", 100)]),
                           "--retry-budget", "0.2")
    answers = await _burst(session, router, 1000)
    samples = await _metrics(session, router)
    requests = _total(samples, "grayroute_requests_total", model="resnet50")
    retries = _total(samples, "grayroute_retries_total")
    denied = _total(samples, "grayroute_retries_denied_total")
    assert requests == 1000 and retries > 0
    assert retries <= 10 + 0.2 * requests  # the reserve plus a fifth of the requests
    # the first wave wanted more retries than that: the budget did bind, and those got a clean 503
    # (as did any request whose two retries also met dead backends)
    assert denied > 0 and len(_errors(answers)) >= denied
    assert all(a.status == 503 and a.retry_after == "1" for a in _errors(answers))
    # every dead backend was marked down by its first refusal: the rest of the burst had no errors
    assert _errors(answers[-600:]) == []
    assert _total(samples, "grayroute_backends", health="down") == 30
    # each request counts once against its assigned version, however many retries it took; those that
    # could not be retried count as refused connections
    assert _total(samples, "grayroute_assigned_requests_total", assigned_version="3") == 1000
    assert _total(samples, "grayroute_assigned_requests_total", assigned_version="3",
                  outcome="connect") == len(_errors(answers))


def test_slow_backend_is_slow_to_accept(slow: dict) -> None:
    """The test backend really has a listen backlog of 5 (what makes bursts hard for a proxy)."""
    backend = slow["x"] = SlowBackend(free_port(), "3").start()
    assert backend.process is not None
    queued = []
    os.kill(backend.process.pid, signal.SIGSTOP)  # stops accepting; the kernel keeps queueing handshakes
    try:
        for _ in range(10):
            sock = socket.socket()
            sock.settimeout(0.3)
            try:
                sock.connect(("127.0.0.1", backend.port))
                queued.append(True)
            except TimeoutError:
                queued.append(False)
            finally:
                sock.close()
    finally:
        os.kill(backend.process.pid, signal.SIGCONT)
    # backlog 5: five or six handshakes (by kernel version) wait in the accept queue, then SYNs are dropped
    assert queued[:5] == [True] * 5 and queued[6:] == [False] * 4


async def test_load_is_shed_only_past_the_queue_bound_or_deadline(backends: dict, routers: list, tmp_path: Path,
                                                                  session: aiohttp.ClientSession) -> None:
    backend = await start_backend(backends, "3", "3", delay=0.4)
    router = await _router(routers, tmp_path, model_spec({"3": [backend.url]}, [("3", 100)]),
                           "--max-connections", "2", "--max-pending", "4", "--queue-timeout", "0.6")
    answers = await _burst(session, router, 16, clients=16)
    assert len(backend.connections) <= 2
    # 2 sent at once; of the 4 waiting, 2 get a connection after 0.4 s and 2 would only after 0.8 s,
    # past the 0.6 s deadline; the other 10 found the queue full and were shed at once
    ok = [a for a in answers if a.status == 200]
    full = [a for a in answers if a.status == 503 and a.seconds < 0.3]
    late = [a for a in answers if a.status == 503 and a.seconds >= 0.55]
    assert (len(ok), len(full), len(late)) == (4, 10, 2)
    assert all(a.retry_after == "1" and a.version == "3" for a in full + late)
    samples = await _metrics(session, router)
    assert _total(samples, "grayroute_shed_total", reason="queue_full") == 10
    assert _total(samples, "grayroute_shed_total", reason="queue_timeout") == 2
    assert _total(samples, "grayroute_requests_total", status="503", version="3") == 12
    # the shed requests count against the version their users were assigned, as shed
    assert _total(samples, "grayroute_assigned_requests_total", assigned_version="3", outcome="shed") == 12
    assert _total(samples, "grayroute_assigned_requests_total", assigned_version="3", outcome="ok") == 4
