"""Keep-alive HTTP/1.1 client for engine backends: an asyncio protocol plus httptools.

Measured on the router's hot path (README, ``tests/bench``): aiohttp's client
costs several times more CPU per proxied request than this, and httpx far
more. Bodies are small tensors, so requests and responses are buffered whole:
one write out, one message in, no per-chunk overhead.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from urllib.parse import urlsplit

import httptools

from router.errors import ConnectError, StaleConnection, UpstreamError, UpstreamTimeout

Headers = list[tuple[bytes, bytes]]


_TLS: ssl.SSLContext | None = None


def _tls_context() -> ssl.SSLContext:
    global _TLS
    if _TLS is None:
        _TLS = ssl.create_default_context()
    return _TLS


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: Headers, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class _Connection(asyncio.Protocol):
    """One upstream connection; at most one request in flight (no pipelining)."""

    __slots__ = (
        "backend",
        "chunks",
        "closed",
        "complete",
        "framed",
        "headers",
        "keep_alive",
        "parser",
        "received",
        "reused",
        "size",
        "timer",
        "transport",
        "waiter",
    )

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Response] | None = None
        self.headers: Headers = []
        self.chunks: list[bytes] = []
        self.closed = False
        self.received = False  # any response byte for the current request
        self.complete = False
        self.reused = False
        self.timer: asyncio.TimerHandle | None = None
        self.keep_alive = False
        self.framed = True  # False: the body runs until the backend closes (no length, not chunked)
        self.size = 0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"bad response from {self.backend.url}: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.backend.forget(self)
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if not self.received and self.reused:
            self._fail(StaleConnection(f"keep-alive connection to {self.backend.url} closed"))
        elif not self.framed:
            self.keep_alive = False
            self.on_message_complete()
        else:
            self._fail(UpstreamError(f"{self.backend.url} closed the connection mid-response"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status >= 200 and status not in (204, 304):
            names = {name.lower() for name, _ in self.headers}
            self.framed = b"content-length" in names or b"transfer-encoding" in names

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.backend.max_response:
            self._fail(UpstreamError(f"{self.backend.url} sent a response over {self.backend.max_response} bytes"))
            return
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.complete = True
        # llhttp forgets this once the callback returns
        self.keep_alive = self.parser.should_keep_alive()
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        body = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        waiter.set_result(Response(self.parser.get_status_code(), self.headers, body))

    def _fail(self, exc: UpstreamError) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()

    def _timed_out(self) -> None:
        self.timer = None
        self._fail(UpstreamTimeout(f"{self.backend.url} did not answer in time"))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
            self.backend.forget(self)

    def send(self, head: bytes, body: bytes, timeout: float) -> asyncio.Future[Response]:
        assert self.transport is not None
        loop = self.backend.loop
        self.waiter = waiter = loop.create_future()
        self.headers = []
        self.chunks = []
        self.received = False
        self.complete = False
        self.framed = True
        self.size = 0
        self.timer = loop.call_later(timeout, self._timed_out)
        if body:
            self.transport.writelines((head, body))
        else:
            self.transport.write(head)
        return waiter


class Backend:
    """One engine endpoint with its idle connections and its health state."""

    __slots__ = (
        "_probe",
        "connect_timeout",
        "ejected",
        "failures",
        "host",
        "host_header",
        "idle",
        "loop",
        "max_idle",
        "max_response",
        "on_change",
        "outstanding",
        "port",
        "prefix",
        "tls",
        "url",
    )

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 1.0,
        max_idle: int = 256,
        max_response: int = 256 * 1024 * 1024,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"backends are http:// or https:// URLs, not {url!r}")
        self.url = url
        self.host = parts.hostname
        # https: the system's trust store (OpenSSL honours SSL_CERT_FILE / SSL_CERT_DIR for private CAs)
        self.tls = _tls_context() if parts.scheme == "https" else None
        self.port = parts.port or (443 if self.tls else 80)
        self.prefix = parts.path.rstrip("/").encode()
        self.host_header = parts.netloc.encode()
        self.loop = asyncio.get_running_loop()
        self.idle: list[_Connection] = []
        self.outstanding = 0
        self.failures = 0  # consecutive
        self.ejected = False
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.max_response = max_response  # a runaway backend must not exhaust the router's memory
        self._probe: asyncio.Task[None] | None = None
        self.on_change = on_change

    def __repr__(self) -> str:
        return f"Backend({self.url!r}, ejected={self.ejected}, outstanding={self.outstanding})"

    def forget(self, conn: _Connection) -> None:
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    async def _connect(self) -> _Connection:
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await self.loop.create_connection(
                    lambda: _Connection(self), self.host, self.port,
                    ssl=self.tls, server_hostname=self.host if self.tls else None,
                )
        except TimeoutError as exc:
            raise ConnectError(f"connecting to {self.url} timed out") from exc
        except OSError as exc:
            raise ConnectError(f"cannot connect to {self.url}: {exc.strerror or exc}") from exc
        return conn

    async def request(
        self, method: str, target: bytes, headers: Headers, body: bytes, timeout: float
    ) -> Response:
        """Send one request and buffer the answer; raises ``UpstreamError`` subclasses."""
        conn: _Connection | None = None
        idle = self.idle
        while idle:
            candidate = idle.pop()
            if not candidate.closed:
                conn = candidate
                conn.reused = True
                break
        if conn is None:
            conn = await self._connect()
        head = b"".join((
            method.encode(), b" ", self.prefix, target, b" HTTP/1.1\r\nhost: ", self.host_header,
            b"\r\ncontent-length: ", str(len(body)).encode(), b"\r\n",
            *[b"%s: %s\r\n" % pair for pair in headers],
            b"\r\n",
        ))
        self.outstanding += 1
        try:
            response = await conn.send(head, body, timeout)
        except asyncio.CancelledError:
            conn.close()  # the client went away mid-request; the connection state is unknown
            raise
        finally:
            self.outstanding -= 1
        if conn.keep_alive and not conn.closed and len(idle) < self.max_idle:
            conn.waiter = None
            idle.append(conn)
        else:
            conn.close()
        return response

    # health
    def succeeded(self) -> None:
        self.failures = 0

    def failed(self, exc: UpstreamError, *, eject_after: int) -> None:
        """Count a failure; a refused connection ejects at once, others after a streak."""
        self.failures += 1
        refused = isinstance(exc, ConnectError)
        if refused or self.failures >= eject_after:
            self.eject()

    def eject(self) -> None:
        if self.ejected:
            return
        self.ejected = True
        for conn in list(self.idle):
            conn.close()
        self._probe = self.loop.create_task(self._probe_until_back())
        if self.on_change is not None:
            self.on_change()

    async def _probe_until_back(self, first: float = 0.2, ceiling: float = 5.0) -> None:
        delay = first
        while True:
            await asyncio.sleep(delay)
            try:
                response = await self.request("GET", b"/v2/health/ready", [], b"", self.connect_timeout * 2)
            except UpstreamError:
                delay = min(delay * 2, ceiling)
                continue
            if 200 <= response.status < 300:
                break
            delay = min(delay * 2, ceiling)
        self.ejected = False
        self.failures = 0
        self._probe = None
        if self.on_change is not None:
            self.on_change()

    def close(self) -> None:
        """Stop probing and drop idle connections (the backend left the snapshot)."""
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        for conn in list(self.idle):
            conn.close()
        self.on_change = None
