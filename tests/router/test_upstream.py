"""The upstream client against hand-written servers: framing, keep-alive, stale connections, refusals,
the bounded pool and its queue, and the health of a version's backends."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable

import pytest

from router.errors import BackendClosed, ConnectRefused, ConnectTimeout, Overloaded, UpstreamError, UpstreamTimeout
from router.table import VersionGroup
from router.upstream import MAX_CONNECTING, Backend, Health
from tests.services import free_port


async def _server(answer: Callable[[bytes], bytes | None], *, close_after: bool = False) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                body = await reader.readexactly(length)
                reply = answer(head + body)
                if reply is None:
                    continue  # never answer
                writer.write(reply)
                await writer.drain()
                if close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    port = free_port()
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    return server, port


@pytest.fixture
async def servers() -> AsyncIterator[list[asyncio.Server]]:
    started: list[asyncio.Server] = []
    yield started
    for server in started:
        server.close()


async def test_chunked_and_close_delimited_bodies(servers: list) -> None:
    chunked, p1 = await _server(lambda _: b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    closing, p2 = await _server(lambda _: b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil-eof", close_after=True)
    servers += [chunked, closing]
    a, b = Backend(f"http://127.0.0.1:{p1}"), Backend(f"http://127.0.0.1:{p2}")
    for _ in range(2):
        response = await a.request("POST", b"/x", [], b"{}", 2.0)
        assert (response.status, response.body) == (200, b"abcde")
    assert len(a.idle) == 1  # kept alive and reused
    response = await b.request("GET", b"/x", [], b"", 2.0)
    assert response.body == b"until-eof"
    assert b.idle == []


async def test_connection_closed_by_the_peer_is_not_reused(servers: list) -> None:
    # answers as if keeping the connection alive, then closes it (an idle timeout on the backend)
    server, port = await _server(lambda _: b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", close_after=True)
    servers.append(server)
    backend = Backend(f"http://127.0.0.1:{port}")
    for _ in range(3):
        assert (await backend.request("GET", b"/", [], b"", 2.0)).body == b"ok"
        await asyncio.sleep(0.05)
        assert backend.idle == []  # dropped as soon as the peer closed it


async def test_timeout_and_garbage(servers: list) -> None:
    silent, p1 = await _server(lambda _: None)
    garbage, p2 = await _server(lambda _: b"NOT HTTP AT ALL\r\n\r\n")
    servers += [silent, garbage]
    with pytest.raises(UpstreamTimeout):
        await Backend(f"http://127.0.0.1:{p1}").request("GET", b"/", [], b"", 0.2)
    with pytest.raises(UpstreamError):
        await Backend(f"http://127.0.0.1:{p2}").request("GET", b"/", [], b"", 1.0)


async def test_a_new_connection_closed_before_the_answer_is_told_apart_from_a_stale_one(servers: list) -> None:
    hangs_up, port = await _server(lambda _: b"", close_after=True)  # reads the request, closes, says nothing
    servers.append(hangs_up)
    backend = Backend(f"http://127.0.0.1:{port}")
    with pytest.raises(BackendClosed):
        await backend.request("POST", b"/v2/models/m/infer", [], b"{}", 2.0)


async def test_refused_connection_marks_down_and_probe_readmits_within_a_second() -> None:
    port = free_port()
    changes = []
    backend = Backend(f"http://127.0.0.1:{port}", on_change=lambda: changes.append(backend.health))
    group = VersionGroup("3", [backend])
    with pytest.raises(ConnectRefused) as refused:
        await backend.request("GET", b"/", [], b"", 1.0)
    group.failed(backend, refused.value, eject_after=3)
    group.refresh()
    # nothing listens: down at once, even though it is the version's only backend
    assert backend.health is Health.DOWN and changes == [Health.DOWN] and group.live == [] and not group.panic
    await asyncio.sleep(1.0)  # long enough for the probe to back off to its ceiling
    listening = asyncio.get_running_loop().time()
    ready, _ = await _server_on(port)
    try:
        while backend.health is not Health.HEALTHY:
            assert asyncio.get_running_loop().time() - listening < 1.0, "not readmitted within a second"
            await asyncio.sleep(0.02)
        assert changes == [Health.DOWN, Health.HEALTHY]
    finally:
        ready.close()
        backend.close()


async def _server_on(port: int) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", port), port


async def test_oversized_response_is_cut_off(servers: list) -> None:
    server, port = await _server(lambda _: b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"z" * 100)
    servers.append(server)
    with pytest.raises(UpstreamError, match="over 50 bytes"):
        await Backend(f"http://127.0.0.1:{port}", max_response=50).request("GET", b"/", [], b"", 2.0)
    assert (await Backend(f"http://127.0.0.1:{port}", max_response=100).request("GET", b"/", [], b"", 2.0)).body == b"z" * 100


class _Counting:
    """An HTTP/1.1 server on loopback that answers after ``delay`` and counts its connections."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.connections = 0
        self.peak = 0
        self.unanswered = 0  # connections accepted that have had no answer yet
        self.peak_unanswered = 0
        self.answered = 0
        self.port = free_port()
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.peak = max(self.peak, self.connections)
        self.unanswered += 1
        self.peak_unanswered = max(self.peak_unanswered, self.unanswered)
        first = True
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                await asyncio.sleep(self.delay)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                self.answered += 1
                if first:
                    first = False
                    self.unanswered -= 1
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.connections -= 1
            self.unanswered -= first
            writer.close()

    async def __aenter__(self) -> _Counting:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def _timed(backend: Backend) -> tuple[float, object]:
    started = asyncio.get_running_loop().time()
    try:
        outcome: object = (await backend.request("POST", b"/v2/models/m/infer", [], b"{}", 5.0)).status
    except (UpstreamError, Overloaded) as exc:
        outcome = exc
    return asyncio.get_running_loop().time() - started, outcome


async def test_a_burst_shares_a_bounded_pool() -> None:
    async with _Counting(0.01) as server:
        backend = Backend(server.url, max_connections=12, max_pending=200)
        outcomes = await asyncio.gather(*(_timed(backend) for _ in range(120)))
        assert [o for _, o in outcomes if o != 200] == []
        # 120 concurrent requests, never more than 12 sockets: the rest waited for one of them
        assert server.peak == 12 and backend.open == 12 and len(backend.idle) == 12
        # and never more than a few new ones at once, whatever the burst (slow start)
        assert server.peak_unanswered == MAX_CONNECTING
        assert backend.connecting == 0
        backend.close()


async def test_full_queue_and_long_wait_are_shed() -> None:
    async with _Counting(0.4) as server:
        backend = Backend(server.url, max_connections=1, max_pending=2, queue_timeout=5.0)
        outcomes = await asyncio.gather(*(_timed(backend) for _ in range(5)))
        shed = [(t, o) for t, o in outcomes if isinstance(o, Overloaded)]
        assert sorted(o for _, o in outcomes if o == 200) == [200] * 3  # one sent, two waited and were sent
        assert [o.reason for _, o in shed] == ["queue_full"] * 2  # type: ignore[attr-defined]
        assert all(t < 0.3 for t, _ in shed)  # at once, not after the server's 0.4 s
        assert all(o.status == 503 and o.retry_after == 1 for _, o in shed)  # type: ignore[attr-defined]
        backend.close()

        patient = Backend(server.url, max_connections=1, max_pending=10, queue_timeout=0.1)
        outcomes = await asyncio.gather(*(_timed(patient) for _ in range(3)))
        assert sorted(str(getattr(o, "reason", o)) for _, o in outcomes) == ["200", "queue_timeout", "queue_timeout"]
        assert server.peak <= 1
        patient.close()


async def test_connect_timeout_backs_off_onto_open_connections() -> None:
    """A full accept queue (the kernel drops the SYN) is overload, not death: wait for the open connection."""
    loop = asyncio.get_running_loop()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)  # an accept queue of one
    listener.setblocking(False)
    port = listener.getsockname()[1]
    events: list[str] = []
    backend = Backend(f"http://127.0.0.1:{port}", connect_timeout=0.3, max_connections=8,
                      on_event=events.append)
    first = loop.create_task(backend.request("POST", b"/infer", [], b"{}", 5.0))
    served, _ = await loop.sock_accept(listener)  # the only connection this server will ever accept

    async def serve() -> None:
        reader, writer = await asyncio.open_connection(sock=served)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0]))
                await asyncio.sleep(0.01)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    serving = loop.create_task(serve())
    filler = []
    try:
        assert (await first).status == 200
        for _ in range(2):  # fill the accept queue; from now on the kernel drops new SYNs
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            filler.append(sock)
        await asyncio.sleep(0.05)
        outcomes = await asyncio.gather(*(_timed(backend) for _ in range(6)))
        assert [o for _, o in outcomes] == [200] * 6
        timeouts = events.count("connect_timeout")
        assert timeouts >= 1 and backend.health is Health.HEALTHY and backend.open == 1
        # backing off: more requests right away wait for the open connection instead of connecting
        outcomes = await asyncio.gather(*(_timed(backend) for _ in range(6)))
        assert [o for _, o in outcomes] == [200] * 6 and events.count("connect_timeout") == timeouts
        # with no connection at all there is nothing to wait for: the request fails, nothing was sent
        fresh = Backend(f"http://127.0.0.1:{port}", connect_timeout=0.3)
        with pytest.raises(ConnectTimeout):
            await fresh.request("POST", b"/infer", [], b"{}", 5.0)
        fresh.close()
    finally:
        serving.cancel()
        backend.close()
        for sock in filler:
            sock.close()
        listener.close()


async def test_ejection_is_capped_and_an_all_ejected_version_panics() -> None:
    async with _Counting(0.0) as a, _Counting(0.0) as b, _Counting(0.0) as c:
        group = VersionGroup("3", [])
        backends = [Backend(s.url, on_change=lambda: group.refresh()) for s in (a, b, c)]
        group = VersionGroup("3", backends, max_ejected_share=0.5)
        first, second, third = backends
        slow = UpstreamTimeout("did not answer in time")
        for _ in range(3):
            group.failed(first, slow, eject_after=3)
        assert first.health is Health.EJECTED and set(group.live) == {second, third}
        # a second ejection would take out 2 of 3, over half: refused, however long the streak
        for _ in range(9):
            group.failed(second, slow, eject_after=3)
        assert second.health is Health.HEALTHY and set(group.live) == {second, third}
        # the healthy ones die: the version is not emptied, it panics onto the ejected one
        await b.__aexit__()
        await c.__aexit__()
        for backend in (second, third):
            with pytest.raises(ConnectRefused) as refused:
                await backend.request("GET", b"/", [], b"", 1.0)
            group.failed(backend, refused.value, eject_after=3)
        assert group.live == [first] and group.panic
        assert (await group.pick().request("GET", b"/", [], b"", 1.0)).status == 200  # type: ignore[union-attr]
        for backend in backends:
            backend.close()

    async with _Counting(0.0) as only:
        alone = Backend(only.url)
        single = VersionGroup("4", [alone])
        for _ in range(10):
            single.failed(alone, UpstreamTimeout("slow"), eject_after=3)
        assert alone.health is Health.HEALTHY and single.live == [alone]  # never the last backend
        alone.close()
