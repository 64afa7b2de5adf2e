"""Keep-alive HTTP/1.1 client for engine backends: an asyncio protocol plus httptools.

Measured on the router's hot path (README, ``tests/bench``): aiohttp's client
costs several times more CPU per proxied request than this, and httpx far
more. A request body is sent as the pieces it arrived in (one scatter-gather
write with the head) and an answer is kept as the pieces it arrived in, joined
only if someone asks for ``Response.body``: a 4.8 MB tensor is never copied
inside the router.

Each backend keeps a bounded pool: at most ``max_connections`` open, requests
beyond that wait (``max_pending`` of them, ``queue_timeout`` at most) for a
connection to come free, and past either bound the request is shed
(``Overloaded``) instead of opening yet another socket against a busy server.
A backend's health is one of three states (``Health``); the version it serves
decides whether a failure may eject it (``router.table.VersionGroup``).
"""

from __future__ import annotations

import asyncio
import enum
import random
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

import httptools

from router.errors import (
    BackendClosed,
    ConnectRefused,
    ConnectTimeout,
    Overloaded,
    RouterError,
    StaleConnection,
    UpstreamError,
    UpstreamTimeout,
)

Headers = list[tuple[bytes, bytes]]
_FRAMING = (b"content-length", b"transfer-encoding")
Body = Sequence[bytes | bytearray | memoryview]  # a body as the pieces it arrived in


_TLS: ssl.SSLContext | None = None


def _tls_context() -> ssl.SSLContext:
    global _TLS
    if _TLS is None:
        _TLS = ssl.create_default_context()
    return _TLS


class Response:
    __slots__ = ("_body", "headers", "parts", "size", "status")

    def __init__(self, status: int, headers: Headers, parts: list[bytes]) -> None:
        self.status = status
        self.headers = headers
        self.parts = parts  # as received: written to the client as they are
        self.size = len(parts[0]) if len(parts) == 1 else sum(map(len, parts))
        self._body: bytes | None = parts[0] if len(parts) == 1 else None

    @property
    def body(self) -> bytes:
        """The whole body in one piece (joined on first use: the proxy path never asks)."""
        if self._body is None:
            self._body = b"".join(self.parts)
        return self._body




class StreamedBody:
    """A request body still arriving from the client, forwarded upstream as it arrives.

    ``router.http`` hands each read of the client's socket to ``add`` as it is
    (no parser copy, no join), and each is written on to the backend at once:
    the client's and the backend's transfers overlap instead of following each
    other. The pieces are kept until the request ends. Keeping them is what lets
    a pooled connection found closed as it was written be retried from the
    first byte on a new one, and the shadow mirror send the body again after
    the answer; the memory is the body's, as when it was buffered whole. A
    refused connection needs nothing: no byte was sent.
    """

    __slots__ = ("aborted", "declared", "finished", "left", "pieces", "sink")

    def __init__(self, received: list[bytes], left: int, finished: asyncio.Future[None]) -> None:
        self.pieces: list[bytes | memoryview] = list(received)  # what the parser had already passed on
        self.declared = sum(len(part) for part in received) + left
        self.left = left  # bytes still to come
        self.sink: _Connection | None = None  # the upstream connection it is being written to
        self.finished = finished  # done once whole or aborted
        self.aborted: RouterError | None = None

    @property
    def complete(self) -> bool:
        return self.left == 0

    def add(self, piece: bytes | memoryview) -> bool:
        """One more piece from the client (never past the declared end), sent on; True once whole."""
        self.pieces.append(piece)
        self.left -= len(piece)
        sink = self.sink
        if sink is not None and sink.transport is not None:
            sink.transport.write(piece)
        if self.left == 0:
            if not self.finished.done():
                self.finished.set_result(None)
            return True
        return False

    def attach(self, conn: _Connection) -> None:
        """Write what has arrived so far on ``conn``, and the rest as it arrives."""
        assert conn.transport is not None
        self.sink = conn
        if self.pieces:
            conn.transport.writelines(self.pieces)

    def release(self) -> None:
        """The request is over: its memory goes now, not whenever a reference cycle is collected."""
        self.pieces = []

    def abort(self, exc: RouterError) -> None:
        """The client stopped sending: the exchange it feeds fails with ``exc``."""
        self.aborted = exc
        if self.sink is not None:
            self.sink.fail(exc)
            self.sink = None
        if not self.finished.done():
            self.finished.set_result(None)


class _Connection(asyncio.Protocol):
    """One upstream connection; at most one request in flight (no pipelining)."""

    __slots__ = (
        "backend",
        "chunks",
        "closed",
        "complete",
        "counted",
        "proven",
        "framed",
        "headers",
        "keep_alive",
        "limit",
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
        self.counted = False  # holds one of its backend's ``max_connections`` places
        self.proven = False  # has answered a request: the server accepted it
        self.received = False  # any response byte for the current request
        self.complete = False
        self.reused = False
        self.timer: asyncio.TimerHandle | None = None
        self.keep_alive = False
        self.framed = True  # False: the body runs until the backend closes (no length, not chunked)
        self.size = 0
        self.limit = backend.max_response

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
        self._release_place()
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if not self.received:
            if self.reused:
                self._fail(StaleConnection(f"keep-alive connection to {self.backend.url} closed"))
            else:
                self._fail(BackendClosed(f"{self.backend.url} closed the connection before answering"))
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
            for name, _ in self.headers:  # no set of every name: the first framing header settles it
                if name.lower() in _FRAMING:
                    return
            self.framed = False

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.limit:
            self._fail(UpstreamError(f"{self.backend.url} sent a response over {self.limit} bytes"))
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
        waiter.set_result(Response(self.parser.get_status_code(), self.headers, self.chunks))

    def fail(self, exc: RouterError) -> None:
        self._fail(exc)

    def _fail(self, exc: RouterError) -> None:
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
        self._release_place()

    def _release_place(self) -> None:
        if self.counted:  # once per connection, whichever of close / connection_lost comes first
            self.counted = False
            self.backend.connection_gone(self)

    def send(self, head: bytes, body: Body | StreamedBody, timeout: float, limit: int) -> asyncio.Future[Response]:
        assert self.transport is not None
        loop = self.backend.loop
        self.limit = limit
        self.waiter = waiter = loop.create_future()
        self.headers = []
        self.chunks = []
        self.received = False
        self.complete = False
        self.framed = True
        self.size = 0
        self.timer = loop.call_later(timeout, self._timed_out)
        if isinstance(body, StreamedBody):
            self.transport.write(head)
            body.attach(self)
        elif body:
            self.transport.writelines((head, *body))
        else:
            self.transport.write(head)
        return waiter


class Health(enum.Enum):
    """Where a backend stands; its version routes over the healthy ones (``router.table``).

    A refused connection and a connect timeout both mean "no answer", but they
    say opposite things about the backend:

    - *refused*: the kernel answered the SYN with a reset because nothing
      listens on the port. The engine process is dead or not started yet; no
      request can succeed there. The backend goes DOWN at once, and a probe
      every half second or less brings it back as soon as it listens and is ready.
    - *connect timeout*: the SYN got no answer. Against a live server this is a
      full accept queue (listen backlog): Linux drops the SYN and the client
      waits for its retransmission. The process is alive and still answering
      the connections it already has, and ejecting it would pour its load onto
      its neighbours. So one timeout never ejects: the pool stops opening
      connections for ``CONNECT_BACKOFF`` and waits for those it has, and only a
      streak of failed requests ejects, within the version's cap.
    """

    HEALTHY = "healthy"
    EJECTED = "ejected"  # a streak of failed requests; readmitted once its ejection time is over and it is ready
    DOWN = "down"  # refuses connections; readmitted when it listens and is ready again


CONNECT_BACKOFF = 1.0  # seconds: Linux retransmits a dropped SYN after one second
# New connections a backend has not answered on yet. The kernel completes a handshake before the
# server accepts it, so a burst of connects lands in the accept queue all at once; a few at a time
# (slow start) keeps the router's share of that queue under even a small listen backlog.
MAX_CONNECTING = 4
_DOWN_PROBE = (0.1, 0.5)  # first delay, ceiling: a restarted engine is routed to within a second
_EJECTION = (1.0, 30.0)  # first ejection time, ceiling; it doubles for each ejection in a row


def _expire(waiter: asyncio.Future[_Connection | None], url: str, seconds: float) -> None:
    if not waiter.done():
        waiter.set_exception(Overloaded(f"no connection to {url} came free within {seconds:g} s", "queue_timeout"))


class Backend:
    """One engine endpoint: its bounded connection pool and its health."""

    __slots__ = (
        "_probe",
        "backoff_until",
        "connect_timeout",
        "connecting",
        "ejections",
        "failures",
        "health",
        "host",
        "host_header",
        "idle",
        "loop",
        "max_connections",
        "max_pending",
        "max_response",
        "on_change",
        "on_event",
        "open",
        "outstanding",
        "port",
        "prefix",
        "queue_timeout",
        "readmitted_at",
        "retired",
        "tls",
        "url",
        "waiters",
    )

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 1.0,
        max_connections: int = 64,
        max_pending: int = 256,
        queue_timeout: float = 1.0,
        max_response: int = 256 * 1024 * 1024,
        on_change: Callable[[], None] | None = None,
        on_event: Callable[[str], None] | None = None,
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
        self.open = 0  # connections open or being opened, at most ``max_connections``
        self.connecting = 0  # of those, not yet proven by an answer: at most ``MAX_CONNECTING``
        self.waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self.backoff_until = 0.0  # loop time: no new connection before it while others are open
        self.outstanding = 0  # requests sent or waiting for a connection, for the balancer
        self.failures = 0  # consecutive
        self.health = Health.HEALTHY
        self.ejections = 0  # in a row
        self.readmitted_at = 0.0
        self.retired = False
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self.max_pending = max_pending
        self.queue_timeout = queue_timeout
        self.max_response = max_response  # a runaway backend must not exhaust the router's memory
        self._probe: asyncio.Task[None] | None = None
        self.on_change = on_change
        self.on_event = on_event

    def __repr__(self) -> str:
        return f"Backend({self.url!r}, {self.health.value}, open={self.open}, outstanding={self.outstanding})"

    async def request(
        self, method: str, target: bytes, headers: Headers, body: bytes | Body | StreamedBody, timeout: float,
        max_response: int | None = None,
    ) -> Response:
        """Send one request and buffer the answer; raises ``Overloaded`` or ``UpstreamError`` subclasses.

        ``ConnectError`` and ``Overloaded`` mean nothing was sent. The body is kept
        whole until the answer (it is the caller's, in pieces): a connection found
        stale as it was written is retried with it on a new one. ``max_response``
        lowers the backend's answer size limit for this request (a shadow mirror's
        answer is held no larger than its request).
        """
        limit = self.max_response if max_response is None else min(max_response, self.max_response)
        if isinstance(body, (bytes, bytearray)):  # noqa: UP038 - the tuple form is the faster check
            body = (body,) if body else ()
        streamed: StreamedBody | None = None
        if isinstance(body, StreamedBody):
            streamed = body
            length = body.declared
        else:
            length = len(body[0]) if len(body) == 1 else sum(map(len, body))
        head = b"".join((
            method.encode(), b" ", self.prefix, target, b" HTTP/1.1\r\nhost: ", self.host_header,
            b"\r\ncontent-length: ", str(length).encode(), b"\r\n",
            *[b"%s: %s\r\n" % pair for pair in headers],
            b"\r\n",
        ))
        self.outstanding += 1
        try:
            fresh = False
            while True:
                conn = await self._acquire(fresh)
                if streamed is not None and streamed.aborted is not None:
                    conn.close()  # the client stopped sending while it waited for a connection
                    raise streamed.aborted
                try:
                    response = await conn.send(head, body, timeout, limit)
                    break
                except StaleConnection:
                    # closed by the backend as we wrote to it (its idle timeout): nothing was processed.
                    # Once more on a new connection: if the process died, the others are stale too,
                    # and a new one is refused at once (``ConnectRefused``: the caller goes elsewhere).
                    if fresh:
                        raise
                    fresh = True
                except asyncio.CancelledError:
                    conn.close()  # the client went away mid-request; the connection state is unknown
                    raise
                finally:
                    if streamed is not None and streamed.sink is conn:
                        streamed.sink = None
        finally:
            self.outstanding -= 1
        proved = not conn.proven
        if proved:
            conn.proven = True
            if conn.counted:  # else ``connection_gone`` already let it go as unproven
                self.connecting -= 1
        # answered before the whole body was sent (it did not wait for it): the exchange is unfinished
        if conn.keep_alive and not conn.closed and not self.retired and (streamed is None or streamed.complete):
            conn.waiter = None
            self._hand_over(conn)
        else:
            conn.close()
        if proved:
            self._wake()  # one more new connection may be opened now
        return response

    # the pool
    async def _acquire(self, fresh: bool = False) -> _Connection:
        """An idle connection (unless ``fresh``), a new one, or one handed over after queueing for it."""
        idle = self.idle
        backed_off = False
        while True:
            while idle and not fresh:
                conn = idle.pop()
                if not conn.closed:
                    conn.reused = True
                    return conn
            if fresh and idle and self.open >= self.max_connections:
                idle[0].close()  # make room for the new connection (its place is handed on first)
            if self._may_open():
                self.open += 1
                self.connecting += 1
            else:
                got = await self._wait()
                if got is not None:
                    if got.closed or fresh:
                        got.close()  # not for this request: frees a place, for it or for a waiter before it
                        continue
                    got.reused = True
                    return got
                # None: a place came free and was reserved for this request (``open``, ``connecting``)
            try:
                return await self._connect()
            except ConnectTimeout:
                # overloaded, not dead (``Health``): wait once for a connection it already serves
                if backed_off or self.open == 0:
                    raise
                backed_off = True

    async def _wait(self) -> _Connection | None:
        """Queue for a connection handed over by another request, or for a place to open one."""
        waiters = self.waiters
        if len(waiters) >= self.max_pending:
            raise Overloaded(f"{self.max_pending} requests already wait for a connection to {self.url}", "queue_full")
        waiter: asyncio.Future[_Connection | None] = self.loop.create_future()
        waiters.append(waiter)
        timer = self.loop.call_later(self.queue_timeout, _expire, waiter, self.url, self.queue_timeout)
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # handed a connection or a place as the wait ended (client gone): pass it on, never drop it
                got = waiter.result()
                if got is None:
                    self._place_freed(proven=False)
                elif not got.closed:
                    self._hand_over(got)
            else:
                try:
                    waiters.remove(waiter)
                except ValueError:
                    pass
            raise
        finally:
            timer.cancel()

    async def _connect(self) -> _Connection:
        """Open a connection in the place the caller took in ``open``; the place is freed on failure."""
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await self.loop.create_connection(
                    lambda: _Connection(self), self.host, self.port,
                    ssl=self.tls, server_hostname=self.host if self.tls else None,
                )
        except TimeoutError as exc:
            self.backoff_until = self.loop.time() + CONNECT_BACKOFF
            self._place_freed(proven=False)
            self.event("connect_timeout")
            raise ConnectTimeout(f"connecting to {self.url} timed out") from exc
        except OSError as exc:
            self._place_freed(proven=False)
            raise ConnectRefused(f"cannot connect to {self.url}: {exc.strerror or exc}") from exc
        except BaseException:
            self._place_freed(proven=False)
            raise
        if conn.closed:  # the peer hung up before it was ever used
            self._place_freed(proven=False)
            raise StaleConnection(f"{self.url} closed a new connection at once")
        conn.counted = True
        return conn

    def _hand_over(self, conn: _Connection) -> None:
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self.idle.append(conn)

    def _may_open(self) -> bool:
        return (self.open < self.max_connections and self.connecting < MAX_CONNECTING
                and (self.open == 0 or self.loop.time() >= self.backoff_until))

    def _wake(self) -> None:
        """Reserve a place for the first waiter, if a new connection may be opened now."""
        waiters = self.waiters
        while waiters and self._may_open():
            waiter = waiters.popleft()
            if not waiter.done():
                self.open += 1
                self.connecting += 1
                waiter.set_result(None)

    def _place_freed(self, proven: bool = True) -> None:
        self.open -= 1
        if not proven:
            self.connecting -= 1
        self._wake()

    def connection_gone(self, conn: _Connection) -> None:
        """A pooled connection closed (either side): its place is free."""
        try:
            self.idle.remove(conn)
        except ValueError:
            pass
        self._place_freed(proven=conn.proven)

    # health
    def succeeded(self) -> None:
        self.failures = 0

    def mark_down(self) -> None:
        """Nothing listens there: route around it at once and probe it often."""
        if self.health is Health.DOWN:
            return
        self.health = Health.DOWN
        for conn in list(self.idle):
            conn.close()
        waiters = self.waiters
        while waiters:  # they would only wait out their deadline: let them go elsewhere now
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectRefused(f"{self.url} went down"))
        self.event("down")
        if self._probe is None:
            self._probe = self.loop.create_task(self._probe_until_back())
        self._changed()

    def eject(self) -> None:
        """Out of rotation for its ejection time (the caller checked the version's cap)."""
        if self.health is not Health.HEALTHY:
            return
        if self.loop.time() - self.readmitted_at > _EJECTION[1]:
            self.ejections = 0  # behaved for a while since the last one
        self.ejections += 1
        self.health = Health.EJECTED
        self.event("ejected")
        if self._probe is None:
            self._probe = self.loop.create_task(self._probe_until_back())
        self._changed()

    async def _probe_until_back(self) -> None:
        if self.health is Health.DOWN:
            delay = _DOWN_PROBE[0]
        else:
            delay = min(_EJECTION[0] * 2 ** (self.ejections - 1), _EJECTION[1])
        while True:
            await asyncio.sleep(delay * (0.9 + 0.2 * random.random()))  # routers must not probe in lockstep
            try:
                if await self._ready():
                    break
            except ConnectRefused:
                if self.health is Health.EJECTED:  # it died while out of rotation
                    self.health = Health.DOWN
                    self.event("down")
                    self._changed()
            ceiling = _DOWN_PROBE[1] if self.health is Health.DOWN else _EJECTION[1]
            delay = min(delay * 2, ceiling)
        self.health = Health.HEALTHY
        self.failures = 0
        self.readmitted_at = self.loop.time()
        self._probe = None
        self.event("readmitted")
        self._changed()

    async def _ready(self) -> bool:
        """One readiness probe on a connection of its own: the pool's may all be busy."""
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await self.loop.create_connection(
                    lambda: _Connection(self), self.host, self.port,
                    ssl=self.tls, server_hostname=self.host if self.tls else None,
                )
        except TimeoutError:
            return False
        except OSError as exc:
            raise ConnectRefused(f"cannot connect to {self.url}: {exc.strerror or exc}") from exc
        head = b"GET %s/v2/health/ready HTTP/1.1\r\nhost: %s\r\ncontent-length: 0\r\n\r\n" % (
            self.prefix, self.host_header)
        try:
            response = await conn.send(head, (), self.connect_timeout * 2, self.max_response)
        except UpstreamError:
            return False
        finally:
            conn.close()
        return 200 <= response.status < 300

    def event(self, name: str) -> None:
        if self.on_event is not None:
            self.on_event(name)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def close(self) -> None:
        """Stop probing and drop idle connections (the backend left the snapshot)."""
        self.retired = True
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        for conn in list(self.idle):
            conn.close()
        self.on_change = None
        self.on_event = None
