"""The upstream client against hand-written servers: framing, keep-alive, stale connections, refusals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from router.errors import ConnectError, UpstreamError, UpstreamTimeout
from router.upstream import Backend
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


async def test_refused_connection_ejects_and_probe_readmits() -> None:
    port = free_port()
    changes = []
    backend = Backend(f"http://127.0.0.1:{port}", on_change=lambda: changes.append(backend.ejected))
    with pytest.raises(ConnectError) as refused:
        await backend.request("GET", b"/", [], b"", 1.0)
    backend.failed(refused.value, eject_after=3)
    assert backend.ejected and changes == [True]
    ready, _ = await _server_on(port)
    try:
        for _ in range(50):
            if not backend.ejected:
                break
            await asyncio.sleep(0.1)
        assert not backend.ejected and changes == [True, False]
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
