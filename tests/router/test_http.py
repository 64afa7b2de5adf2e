"""The lean HTTP server under the router, spoken to with raw sockets: the edges of HTTP/1.1."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from tests.router.conftest import (
    RouterProcess,
    infer,
    model_spec,
    router_env,
    snapshot,
    start_backend,
)


async def _router(backends: dict, routers: list, tmp_path: Path, *args: str) -> RouterProcess:
    backend = await start_backend(backends, "3", "3")
    file = tmp_path / "snapshot.json"
    file.write_bytes(snapshot(1, resnet50=model_spec({"3": [backend.url]}, [("3", 100)])))
    router = RouterProcess("--snapshot-file", str(file), "--max-body-bytes", "1000", *args, env=router_env()).start()
    routers.append(router)
    await router.wait_ready()
    return router


async def _exchange(port: int, data: bytes, *, until_close: bool = False, responses: int = 1) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if until_close:
            return await asyncio.wait_for(reader.read(), 5)
        received = b""
        while received.count(b"HTTP/1.1 ") < responses or not received.endswith((b"}", b"\r\n\r\n")):
            chunk = await asyncio.wait_for(reader.read(65536), 5)
            if not chunk:
                break
            received += chunk
        return received
    finally:
        writer.close()


INFER = (b"POST /v2/models/resnet50/infer HTTP/1.1\r\nhost: x\r\nx-user-id: %s\r\n"
         b"content-type: application/json\r\ncontent-length: 2\r\n\r\n{}")


async def test_pipelined_requests_are_answered_in_order(backends: dict, routers: list, tmp_path: Path) -> None:
    router = await _router(backends, routers, tmp_path)
    data = b"".join(INFER % f"user-{i}".encode() for i in range(5))
    received = await _exchange(router.port, data, responses=5)
    assert received.count(b"HTTP/1.1 200 OK") == 5
    assert received.count(b"x-grayroute-version: 3") == 5


async def test_malformed_request_gets_400_and_close(backends: dict, routers: list, tmp_path: Path) -> None:
    router = await _router(backends, routers, tmp_path)
    received = await _exchange(router.port, b"THIS IS NOT HTTP\r\n\r\n", until_close=True)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert f"content-length: {len(body)}".encode() in head


async def test_declared_oversized_body_is_refused_before_upload(backends: dict, routers: list,
                                                                tmp_path: Path) -> None:
    router = await _router(backends, routers, tmp_path)
    head = (b"POST /v2/models/resnet50/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 100000000\r\n"
            b"expect: 100-continue\r\n\r\n")
    received = await _exchange(router.port, head, until_close=True)  # no body sent at all
    assert received.startswith(b"HTTP/1.1 413")
    assert b"body_too_large" in received and b"connection: close" in received


async def test_connection_close_and_http_1_0(backends: dict, routers: list, tmp_path: Path) -> None:
    router = await _router(backends, routers, tmp_path)
    closing = (INFER % b"u1").replace(b"host: x\r\n", b"host: x\r\nconnection: close\r\n")
    received = await _exchange(router.port, closing, until_close=True)
    assert received.startswith(b"HTTP/1.1 200") and b"connection: close" in received
    old = (INFER % b"u2").replace(b"HTTP/1.1", b"HTTP/1.0")
    received = await _exchange(router.port, old, until_close=True)
    assert b" 200 " in received.split(b"\r\n")[0]


async def test_chunked_request_body_passes_through(backends: dict, routers: list, tmp_path: Path) -> None:
    router = await _router(backends, routers, tmp_path)
    backends["3"].behaviour.record = True
    data = (b"POST /v2/models/resnet50/infer HTTP/1.1\r\nhost: x\r\nx-user-id: u\r\n"
            b"transfer-encoding: chunked\r\n\r\n2\r\n{\"\r\n4\r\na\":1\r\n1\r\n}\r\n0\r\n\r\n")
    received = await _exchange(router.port, data)
    assert received.startswith(b"HTTP/1.1 200")
    assert backends["3"].behaviour.seen[-1].body == b'{"a":1}'


@pytest.mark.parametrize("server", ["uvicorn"])
async def test_uvicorn_remains_available(backends: dict, routers: list, tmp_path: Path, server: str) -> None:
    router = await _router(backends, routers, tmp_path, "--http", server)
    async with aiohttp.ClientSession() as session:
        assert await infer(session, router, "u") == (200, "3", "split")
        async with session.post(router.url + "/v2/models/resnet50/infer", data=b"x" * 2000) as response:
            assert response.status == 413
