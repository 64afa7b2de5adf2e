"""Proxying the KServe v2 API: bodies and headers through untouched, clear errors, failover."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
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
from tests.router.kserve import KServe


async def _router(routers: list[RouterProcess], tmp_path: Path, raw: bytes, *args: str) -> RouterProcess:
    file = tmp_path / "snapshot.json"
    file.write_bytes(raw)
    router = RouterProcess("--snapshot-file", str(file), *args, env=router_env()).start()
    routers.append(router)
    await router.wait_ready()
    return router


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def test_json_and_binary_bodies_and_headers_pass_through(backends: dict, routers: list, tmp_path: Path,
                                                               session: aiohttp.ClientSession) -> None:
    backend = await start_backend(backends, "3", "3", record=True)
    router = await _router(routers, tmp_path, snapshot(1, resnet50=model_spec({"3": [backend.url]}, [("3", 100)])))
    # binary tensor extension: a JSON header followed by raw bytes
    header = b'{"inputs":[{"name":"x","shape":[4],"datatype":"UINT8","parameters":{"binary_data_size":4}}]}'
    body = header + bytes([0, 255, 10, 13])
    async with session.post(
        router.url + "/v2/models/resnet50/infer?trace=1", data=body,
        headers={"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream",
                 "x-user-id": "u1", "Connection": "keep-alive", "x-request-id": "abc", "Content-Encoding": "identity"},
    ) as response:
        assert response.status == 200
        assert await response.read() == body
        assert response.headers["Inference-Header-Content-Length"] == str(len(header))
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert response.headers["x-grayroute-version"] == "3"
        assert response.headers["x-grayroute-route"] == "split"
        assert response.headers["x-backend-version"] == "3"
    seen = backend.behaviour.seen[-1]
    assert seen.method == "POST" and seen.path == "/v2/models/resnet50/infer?trace=1"
    assert seen.body == body
    assert seen.headers["inference-header-content-length"] == str(len(header))
    assert seen.headers["x-request-id"] == "abc" and seen.headers["content-encoding"] == "identity"
    assert seen.headers["host"] == f"127.0.0.1:{backend.port}"
    assert "keep-alive" not in seen.headers.get("connection", "")
    # JSON
    async with session.post(router.url + "/v2/models/resnet50/infer", json={"inputs": []},
                            headers={"x-user-id": "u2"}) as response:
        assert (await response.json())["model_version"] == "3"


async def test_metadata_ready_and_explicit_versions(backends: dict, routers: list, tmp_path: Path,
                                                    session: aiohttp.ClientSession) -> None:
    await start_backend(backends, "3", "3")
    await start_backend(backends, "4", "4")
    spec = model_spec({"3": [backends["3"].url], "4": [backends["4"].url], "9": []}, [("3", 100)],
                      default_version="3")
    router = await _router(routers, tmp_path, snapshot(1, resnet50=spec))
    for path, version in [("/v2/models/resnet50", "3"), ("/v2/models/resnet50/ready", "3"),
                          ("/v2/models/resnet50/versions/4", "4"), ("/v2/models/resnet50/versions/4/ready", "4")]:
        async with session.get(router.url + path) as response:
            assert response.status == 200, path
            assert response.headers["x-grayroute-version"] == version
    assert await infer(session, router, "u", version="4") == (200, "4", "explicit")
    # an explicit version without backends is a clear 404, never a silent reroute
    async with session.post(router.url + "/v2/models/resnet50/versions/9/infer", json={}) as response:
        assert response.status == 404
        body = await response.json()
        assert body["code"] == "version_not_ready" and "has no ready backend" in body["error"]
    # a version the model does not have at all says so, rather than blaming readiness
    async with session.post(router.url + "/v2/models/resnet50/versions/99/infer", json={}) as response:
        assert response.status == 404
        body = await response.json()
        assert body == {"error": "no such version: model 'resnet50' has no version '99'",
                        "code": "version_not_found", "details": {"model": "resnet50", "version": "99"}}
    async with session.get(router.url + "/v2/health/live") as response:
        assert response.status == 200


async def test_error_answers(backends: dict, routers: list, tmp_path: Path, session: aiohttp.ClientSession) -> None:
    slow = await start_backend(backends, "slow", "3", delay=2.0)
    spec = model_spec({"3": [slow.url]}, [("3", 100)])
    empty = model_spec({"1": []}, [("1", 100)], salt="empty")
    router = await _router(routers, tmp_path, snapshot(1, resnet50=spec, empty=empty),
                           "--max-body-bytes", "1000", "--upstream-timeout", "0.3")

    async def error(method: str, path: str, **kwargs: object) -> tuple[int, dict]:
        async with session.request(method, router.url + path, **kwargs) as response:  # type: ignore[arg-type]
            body = await response.json()
            # KServe v2 / Open Inference Protocol: "error" is the message string (tritonclient reads it as such)
            assert set(body) == {"error", "code", "details"} and isinstance(body["error"], str) and body["error"]
            return response.status, body

    status, body = await error("POST", "/v2/models/nope/infer", json={})
    assert (status, body["code"]) == (404, "model_not_found")
    status, body = await error("POST", "/v2/models/resnet50/infer", data=b"x" * 2000)
    assert (status, body["code"]) == (413, "body_too_large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds while reading
        for _ in range(5):
            yield b"y" * 400
    status, body = await error("POST", "/v2/models/resnet50/infer", data=chunks())
    assert status == 413
    status, body = await error("POST", "/v2/models/empty/infer", json={})
    assert (status, body["code"]) == (503, "no_ready_backend")
    status, body = await error("POST", "/v2/models/resnet50/infer", json={}, headers={"x-user-id": "u"})
    assert (status, body["code"]) == (504, "upstream_timeout")
    status, body = await error("GET", "/v2/models/resnet50/infer")
    assert status == 405
    status, body = await error("GET", "/nowhere")
    assert status == 404


async def test_not_ready_without_snapshot(routers: list, session: aiohttp.ClientSession) -> None:
    router = RouterProcess(env=router_env()).start()
    routers.append(router)
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        try:
            async with session.get(router.url + "/v2/health/live") as response:
                if response.status == 200:
                    break
        except aiohttp.ClientError:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
    async with session.get(router.url + "/v2/health/ready") as response:
        assert response.status == 503
    async with session.post(router.url + "/v2/models/resnet50/infer", json={}) as response:
        assert response.status == 503
        assert (await response.json())["code"] == "not_ready"


async def test_killed_backend_is_invisible_and_probed_back(backends: dict, routers: list, tmp_path: Path,
                                                           session: aiohttp.ClientSession) -> None:
    a = await start_backend(backends, "3a", "3")
    b = await start_backend(backends, "3b", "3")
    canary = await start_backend(backends, "4", "4")
    spec = model_spec({"3": [a.url, b.url], "4": [canary.url]}, [("3", 50), ("4", 50)], default_version="3")
    router = await _router(routers, tmp_path, snapshot(1, resnet50=spec))

    async def burst(n: int) -> list[tuple[int, str | None, str | None]]:
        return await asyncio.gather(*(infer(session, router, f"user-{i}") for i in range(n)))

    assert all(s == 200 for s, _, _ in await burst(200))  # connections to every backend are pooled now
    await a.stop()  # refuses connections from here on
    results = await burst(300)
    assert [r for r in results if r[0] != 200] == []
    # the whole canary dies: its users fall back to the default version, visibly
    await canary.stop()
    results = await burst(300)
    assert [r for r in results if r[0] != 200] == []
    assert {route for _, _, route in results} == {"split", "fallback"}
    assert all(v == "3" for _, v, _ in results)
    # back on the same port: probed and readmitted
    backends["4-again"] = await KServe(canary.port, canary.behaviour).start()
    for _ in range(100):
        results = await burst(20)
        if any(v == "4" for _, v, _ in results):
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("canary never readmitted")
    async with session.get(router.url + "/metrics") as response:
        text = await response.text()
    assert 'grayroute_fallbacks_total{chosen="4",model="resnet50",version="3"}' in text
    assert ('grayroute_upstream_errors_total{gpu_arch="sm_80",kind="connect",model="resnet50",pool="cpu",'
            'version="4"}') in text


async def test_metrics_are_summed_across_workers(backends: dict, routers: list, tmp_path: Path,
                                                 session: aiohttp.ClientSession) -> None:
    backend = await start_backend(backends, "3", "3")
    router = await _router(routers, tmp_path, snapshot(1, resnet50=model_spec({"3": [backend.url]}, [("3", 100)])),
                           "--workers", "2")
    # fresh connections so both workers get some
    for i in range(40):
        async with aiohttp.ClientSession() as fresh:
            assert (await infer(fresh, router, f"u{i}"))[0] == 200
    line = ""
    for _ in range(50):  # workers share their totals every second
        async with session.get(router.url + "/metrics") as response:
            text = await response.text()
        line = next(row for row in text.splitlines()
                    if row.startswith("grayroute_requests_total{") and 'status="200"' in row)
        if line.endswith(" 40.0"):
            break
        await asyncio.sleep(0.2)
    assert line.endswith(" 40.0"), line


async def test_backend_that_keeps_failing_is_ejected_but_never_the_last(backends: dict, routers: list,
                                                                         tmp_path: Path,
                                                                         session: aiohttp.ClientSession) -> None:
    stable = await start_backend(backends, "3", "3")
    stuck = await start_backend(backends, "4", "4", delay=3.0)
    spare = await start_backend(backends, "4b", "4")
    spec = model_spec({"3": [stable.url], "4": [stuck.url, spare.url]}, [("4", 100)], default_version="3")
    router = await _router(routers, tmp_path, snapshot(1, resnet50=spec), "--upstream-timeout", "0.2")
    answers = [await infer(session, router, f"u{i}") for i in range(40)]
    timeouts = [a for a in answers if a[0] == 504]
    # three timeouts in a row eject the stuck backend; its version's other backend serves the rest
    assert len(timeouts) == 3 and all(a[1:] == ("4", "split") for a in timeouts)  # the error names who failed
    assert answers[-20:] == [(200, "4", "split")] * 20

    # a version whose only backend is stuck keeps it: ejecting it would empty the version (its errors
    # show in its own figures, for the analysis to roll it back), and no stuck request becomes a 503
    spec = model_spec({"3": [stable.url], "4": [stuck.url]}, [("4", 100)], default_version="3", salt="alone")
    other = await _router(routers, tmp_path, snapshot(1, resnet50=spec), "--upstream-timeout", "0.2")
    answers = [await infer(session, other, f"u{i}") for i in range(6)]
    assert answers == [(504, "4", "split")] * 6


async def test_https_backend(backends: dict, routers: list, tmp_path: Path, session: aiohttp.ClientSession) -> None:
    """A backend behind TLS, trusted through SSL_CERT_FILE (how a private CA reaches the router)."""
    import shutil
    import ssl

    from tests.router.kserve import Behaviour
    from tests.services import free_port

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = await asyncio.create_subprocess_exec(
        openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
        "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    assert await made.wait() == 0
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    backend = await KServe(free_port(), Behaviour("3", record=True), tls=context).start()
    backends["tls"] = backend
    assert backend.url.startswith("https://")
    file = tmp_path / "snapshot.json"
    file.write_bytes(snapshot(1, resnet50=model_spec({"3": [backend.url]}, [("3", 100)])))
    router = RouterProcess("--snapshot-file", str(file), env={**router_env(), "SSL_CERT_FILE": str(cert)}).start()
    routers.append(router)
    await router.wait_ready()
    assert await infer(session, router, "u1") == (200, "3", "split")
    assert await infer(session, router, "u2") == (200, "3", "split")  # over the kept-alive TLS connection
    assert len(backend.behaviour.seen) == 2
