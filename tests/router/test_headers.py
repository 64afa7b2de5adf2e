"""What crosses the router in headers: no client credentials or x-grayroute-* inbound,
X-Forwarded-For appended, and the router's own x-grayroute-* answer headers win."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from tests.router.conftest import RouterProcess, model_spec, router_env, snapshot, start_backend


async def _router(backends: dict, routers: list, tmp_path: Path, *args: str) -> RouterProcess:
    backend = await start_backend(backends, "3", "3", record=True)
    file = tmp_path / "snapshot.json"
    file.write_bytes(snapshot(1, resnet50=model_spec({"3": [backend.url]}, [("3", 100)])))
    router = RouterProcess("--snapshot-file", str(file), *args, env=router_env()).start()
    routers.append(router)
    await router.wait_ready()
    return router


SENT = (b"x-user-id: u1\r\nAuthorization: Bearer user-secret\r\nCookie: session=user-secret\r\n"
        b"x-grayroute-shadow: 1\r\nX-GrayRoute-Version: 9\r\nx-grayroute-route: rule:qa\r\n"
        b"X-Forwarded-For: 10.0.0.1\r\nx-forwarded-for: 10.0.0.2\r\nX-Forwarded-Proto: https\r\n"
        b"x-request-id: abc\r\n")


async def _infer(router: RouterProcess, headers: bytes) -> bytes:
    """The raw answer head to one infer request with ``headers`` (repeated names kept as sent)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
    try:
        writer.write(b"POST /v2/models/resnet50/infer HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
                     b"content-type: application/json\r\ncontent-length: 2\r\n%s\r\n{}" % headers)
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    return answer.partition(b"\r\n\r\n")[0]


async def test_backend_gets_no_credentials_or_client_grayroute_headers(backends: dict, routers: list,
                                                                        tmp_path: Path) -> None:
    router = await _router(backends, routers, tmp_path)
    head = await _infer(router, SENT)
    assert head.startswith(b"HTTP/1.1 200") and head.count(b"x-grayroute-version: 3") == 1, head
    seen = backends["3"].behaviour.seen[-1].headers
    assert "authorization" not in seen and "cookie" not in seen
    assert not [name for name in seen if name.startswith("x-grayroute-")], seen
    # the chain the client sent, then the address the router saw; the scheme the router served
    assert seen["x-forwarded-for"] == "10.0.0.1, 10.0.0.2, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-user-id"] == "u1" and seen["x-request-id"] == "abc"


async def test_forwarded_for_is_set_when_the_client_sent_none(backends: dict, routers: list,
                                                              tmp_path: Path) -> None:
    router = await _router(backends, routers, tmp_path)
    async with aiohttp.ClientSession() as session, session.post(
        router.url + "/v2/models/resnet50/infer", json={"inputs": []}, headers={"x-user-id": "u2"},
    ) as response:
        assert response.status == 200
    seen = backends["3"].behaviour.seen[-1].headers
    assert seen["x-forwarded-for"] == "127.0.0.1" and seen["x-forwarded-proto"] == "http"


async def test_forward_header_option_passes_only_the_named_credential(backends: dict, routers: list,
                                                                      tmp_path: Path) -> None:
    router = await _router(backends, routers, tmp_path, "--forward-header", "Authorization")
    assert (await _infer(router, SENT)).startswith(b"HTTP/1.1 200")
    seen = backends["3"].behaviour.seen[-1].headers
    assert seen["authorization"] == "Bearer user-secret"
    assert "cookie" not in seen
    assert not [name for name in seen if name.startswith("x-grayroute-")], seen


async def test_forward_header_refuses_a_header_that_is_not_a_credential(routers: list, tmp_path: Path) -> None:
    router = RouterProcess("--forward-header", "x-grayroute-version", env=router_env()).start()
    routers.append(router)
    assert router.process is not None
    code = await asyncio.to_thread(router.process.wait, 15)
    assert code == 2
    assert "invalid choice: 'x-grayroute-version'" in router.output()
    assert "Traceback" not in router.output()


async def test_router_headers_win_over_the_backends(backends: dict, routers: list, tmp_path: Path) -> None:
    router = await _router(backends, routers, tmp_path)
    backends["3"].behaviour.headers = [(b"X-GrayRoute-Version", b"evil"), (b"x-grayroute-route", b"evil"),
                                       (b"x-grayroute-shadow", b"1"), (b"x-model-extra", b"kept")]
    async with aiohttp.ClientSession() as session, session.post(
        router.url + "/v2/models/resnet50/infer", json={"inputs": []}, headers={"x-user-id": "u3"},
    ) as response:
        assert response.status == 200
        assert response.headers.getall("x-grayroute-version") == ["3"]
        assert response.headers.getall("x-grayroute-route") == ["split"]
        assert "x-grayroute-shadow" not in response.headers
        assert response.headers["x-model-extra"] == "kept"
