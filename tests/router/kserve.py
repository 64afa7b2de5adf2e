"""A tiny KServe v2 server for tests and benchmarks: raw asyncio + httptools, so it costs little CPU.

It answers like Triton would for one model: metadata, readiness, and ``infer``,
whose answer names the version label this server plays. A JSON infer request
is answered with a small JSON body; a binary-extension request (with
``Inference-Header-Content-Length``) is echoed back byte for byte with the
same header, so tests can check bodies pass through untouched.

    python -m tests.router.kserve --port 9001 --version 3 [--delay-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import ssl
from dataclasses import dataclass, field

import httptools


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Behaviour:
    version: str
    model: str = "resnet50"
    delay: float = 0.0  # seconds before answering
    status: int = 200
    record: bool = False
    infer_body: bytes | None = None  # the JSON answer to every JSON infer request, instead of the built-in one
    seen: list[Seen] = field(default_factory=list)
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)  # added to every answer


class _Protocol(asyncio.Protocol):
    def __init__(self, server: KServe) -> None:
        self.server = server
        self.behaviour = server.behaviour
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url, self.headers, self.body = b"", [], []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode()
        body = b"".join(self.body)
        keep_alive = self.parser.should_keep_alive()
        behaviour = self.behaviour
        if behaviour.record:
            behaviour.seen.append(Seen(method, self.url.decode(), {k.decode(): v.decode() for k, v in self.headers}, body))
        answer = self._answer(method, self.url.decode().split("?")[0], body)
        if behaviour.delay:
            asyncio.get_running_loop().call_later(behaviour.delay, self._write, answer, keep_alive)
        else:
            self._write(answer, keep_alive)

    def _answer(self, method: str, path: str, body: bytes) -> bytes:
        behaviour = self.behaviour
        extra: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json")]
        status = 200
        if path in ("/v2/health/ready", "/v2/health/live"):
            payload = b""
        elif path.endswith("/infer"):
            status = behaviour.status
            header_length = dict(self.headers).get(b"inference-header-content-length")
            if header_length is not None:
                extra = [(b"content-type", b"application/octet-stream"),
                         (b"inference-header-content-length", header_length)]
                payload = body
            elif behaviour.infer_body is not None:
                payload = behaviour.infer_body
            else:
                payload = b'{"model_name":"%s","model_version":"%s","outputs":[{"name":"y","datatype":"FP32","shape":[1],"data":[1.0]}]}' % (
                    behaviour.model.encode(), behaviour.version.encode())
        elif path.endswith("/ready"):
            payload = b""
        else:
            payload = json.dumps({"name": behaviour.model, "versions": [behaviour.version], "platform": "tensorrt_plan",
                                  "inputs": [], "outputs": []}).encode()
        reason = b"OK" if status == 200 else b"ERR"
        head = b"HTTP/1.1 %d %s\r\ncontent-length: %d\r\nx-backend-version: %s\r\n" % (
            status, reason, len(payload), behaviour.version.encode())
        head += b"".join(b"%s: %s\r\n" % pair for pair in [*extra, *behaviour.headers])
        return head + b"\r\n" + payload

    def _write(self, answer: bytes, keep_alive: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(answer)
        if not keep_alive:
            self.transport.close()


class KServe:
    """One backend on 127.0.0.1:port; ``stop`` makes the port refuse connections."""

    def __init__(self, port: int, behaviour: Behaviour, tls: ssl.SSLContext | None = None) -> None:
        self.port = port
        self.behaviour = behaviour
        self.tls = tls
        self.connections: set[_Protocol] = set()
        self._server: asyncio.base_events.Server | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    async def start(self) -> KServe:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Protocol(self), "127.0.0.1", self.port,
                                                reuse_address=True, backlog=1024, ssl=self.tls)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for conn in list(self.connections):
                if conn.transport is not None:
                    conn.transport.abort()
            await self._server.wait_closed()
            self._server = None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--output-elements", type=int, default=0,
                        help="answer JSON infer requests with a 1xN FP32 output (values seeded by the version)")
    args = parser.parse_args()
    infer_body = None
    if args.output_elements:
        import random

        rng = random.Random(f"{args.model}/{args.version}")
        data = ",".join(f"{rng.random():.6f}" for _ in range(args.output_elements))
        infer_body = (f'{{"model_name":"{args.model}","model_version":"{args.version}","outputs":[{{"name":"y",'
                      f'"datatype":"FP32","shape":[1,{args.output_elements}],"data":[{data}]}}]}}').encode()

    async def serve() -> None:
        await KServe(args.port, Behaviour(args.version, args.model, args.delay_ms / 1000,
                                          infer_body=infer_body)).start()
        gc.collect()
        gc.freeze()  # like the router: no full collections over startup objects in the tail
        await asyncio.Event().wait()

    try:
        import uvloop
        uvloop.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
