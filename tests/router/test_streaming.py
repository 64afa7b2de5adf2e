"""Large bodies forwarded as they arrive: intact, retried after a refused connection, mirrored, bounded in time."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp

from tests.router.conftest import RouterProcess, model_spec, router_env, snapshot, start_backend
from tests.services import free_port

MB = 1024 * 1024


async def _router(routers: list[RouterProcess], tmp_path: Path, raw: bytes, *args: str) -> RouterProcess:
    file = tmp_path / "snapshot.json"
    file.write_bytes(raw)
    router = RouterProcess("--snapshot-file", str(file), *args, env=router_env()).start()
    routers.append(router)
    await router.wait_ready()
    return router


def _tensor(size: int) -> tuple[bytes, bytes]:
    """(JSON header, whole body) of a binary-extension request of about ``size`` bytes."""
    header = b'{"inputs":[{"name":"x","shape":[%d],"datatype":"UINT8","parameters":{"binary_data_size":%d}}]}' % (
        size, size)
    return header, header + os.urandom(size)


def _head(header: bytes, length: int, user: str, extra: bytes = b"") -> bytes:
    return (b"POST /v2/models/resnet50/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/octet-stream\r\n"
            b"inference-header-content-length: %d\r\nx-user-id: %s\r\ncontent-length: %d\r\n%s\r\n"
            % (len(header), user.encode(), length, extra))


async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes], bytes]:
    status_line = await reader.readline()
    headers: dict[bytes, bytes] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return int(status_line.split()[1]), headers, body


async def test_large_bodies_arrive_intact_in_dribbles_pipelined_and_under_a_burst(
        backends: dict, routers: list, tmp_path: Path) -> None:
    backend = await start_backend(backends, "3", "3", record=True)
    router = await _router(routers, tmp_path, snapshot(1, resnet50=model_spec({"3": [backend.url]}, [("3", 100)])))
    header, body = _tensor(3 * MB)
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
    # dribbled: the head alone, then the body in uneven pieces with pauses (forwarded as they come)
    writer.write(_head(header, len(body), "dribble"))
    await writer.drain()
    offset = 0
    for step in (1, 70_000, 333_333, MB, len(body)):
        writer.write(body[offset:offset + step])
        await writer.drain()
        offset += step
        await asyncio.sleep(0.05)
    status, headers, echoed = await _answer(reader)
    assert status == 200 and echoed == body and headers[b"x-grayroute-version"] == b"3"
    assert backend.behaviour.seen[-1].body == body
    # pipelined: a small request, a large one and a small one in one write; answers in order, bodies intact
    small = b'{"inputs":[]}'
    small_request = (b"POST /v2/models/resnet50/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(small), small))
    _, second = _tensor(MB)
    writer.write(small_request + _head(header, len(second), "pipelined") + second + small_request)
    await writer.drain()
    answers = [await _answer(reader) for _ in range(3)]
    assert [a[0] for a in answers] == [200, 200, 200]
    assert answers[1][2] == second and b"model_name" in answers[0][2] and b"model_name" in answers[2][2]
    writer.close()

    # a concurrent burst of large requests over keep-alive connections
    bodies = [_tensor(MB + i * 10_000)[1] for i in range(16)]
    async with aiohttp.ClientSession() as session:

        async def one(i: int) -> bytes:
            async with session.post(router.url + "/v2/models/resnet50/infer", data=bodies[i], headers={
                    "Inference-Header-Content-Length": str(len(header)), "x-user-id": f"burst-{i}"}) as response:
                assert response.status == 200
                return await response.read()

        assert await asyncio.gather(*(one(i) for i in range(16))) == bodies


async def test_a_refused_connection_is_retried_with_the_whole_streamed_body(
        backends: dict, routers: list, tmp_path: Path) -> None:
    live = await start_backend(backends, "3", "3", record=True)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: connections are refused
    router = await _router(routers, tmp_path, snapshot(1, resnet50=model_spec({"3": [dead, live.url]}, [("3", 100)])))
    header, body = _tensor(2 * MB)
    async with aiohttp.ClientSession() as session:

        async def one(i: int) -> None:
            async with session.post(router.url + "/v2/models/resnet50/infer", data=body, headers={
                    "Inference-Header-Content-Length": str(len(header)), "x-user-id": f"u{i}"}) as response:
                assert response.status == 200
                assert await response.read() == body

        await asyncio.gather(*(one(i) for i in range(12)))
    assert len(live.behaviour.seen) == 12 and all(seen.body == body for seen in live.behaviour.seen)


async def test_a_large_body_that_stops_short_gets_408_and_the_backend_sees_no_request(
        backends: dict, routers: list, tmp_path: Path) -> None:
    backend = await start_backend(backends, "3", "3", record=True)
    router = await _router(routers, tmp_path, snapshot(1, resnet50=model_spec({"3": [backend.url]}, [("3", 100)])),
                           "--body-timeout", "1")
    header, body = _tensor(MB)
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
    writer.write(_head(header, len(body), "slow") + body[:300_000])  # then nothing
    await writer.drain()
    status, _, answer = await asyncio.wait_for(_answer(reader), 5)
    assert status == 408 and b"request body not received within 1 s" in answer
    assert await asyncio.wait_for(reader.read(), 5) == b""  # and the connection is closed
    writer.close()
    assert backend.behaviour.seen == []  # the backend never got a whole request
    # the router still serves
    async with aiohttp.ClientSession() as session, session.post(
            router.url + "/v2/models/resnet50/infer", data=body,
            headers={"Inference-Header-Content-Length": str(len(header))}) as response:
        assert response.status == 200 and await response.read() == body


async def test_a_streamed_body_is_mirrored_whole_to_the_shadow(backends: dict, routers: list, tmp_path: Path) -> None:
    primary = await start_backend(backends, "3", "3", record=True)
    shadow = await start_backend(backends, "4", "4", record=True)
    spec = {**model_spec({"3": [primary.url], "4": [shadow.url]}, [("3", 100)]),
            "shadow": {"version": "4", "percent": 100}}
    router = await _router(routers, tmp_path, snapshot(1, resnet50=spec), "--shadow-max-bytes", str(8 * MB))
    header, body = _tensor(2 * MB)
    async with aiohttp.ClientSession() as session, session.post(
            router.url + "/v2/models/resnet50/infer", data=body,
            headers={"Inference-Header-Content-Length": str(len(header)), "x-user-id": "mirrored"}) as response:
        assert response.status == 200 and await response.read() == body
    for _ in range(100):
        if shadow.behaviour.seen:
            break
        await asyncio.sleep(0.05)
    assert [seen.body for seen in shadow.behaviour.seen] == [body]
    assert shadow.behaviour.seen[0].headers["x-grayroute-shadow"] == "1"
