"""A lean HTTP/1.1 server for the router's app: one asyncio protocol plus httptools.

uvicorn costs ~25 us more CPU per request than a bare httptools protocol
(measured: a hello-world app at ~40 us/request against ~14 us), which is most
of what separates the router from nginx on a small machine. This server does
only what the data plane needs: whole request bodies (bounded), one response
per request in order (pipelined requests wait their turn), keep-alive with an
idle timeout, ``Expect: 100-continue``, lifespan, graceful shutdown. Requests
reach the app as ``router.app.Exchange`` objects, not through ASGI's scope and
message dicts (measured: 16% less CPU per small request); response head and
body go out in one write. ``--http uvicorn`` serves the same app over ASGI.

A large body with a declared length (an image model's binary tensor) bypasses
the parser: the request is dispatched at its head and each read is passed on
to the backend as it arrives, as the same bytes object (``StreamedBody`` in
``router.upstream`` says what that means for retries and the shadow mirror).
No parser copy, no join, and the two transfers overlap. Measured on 0.6 and
4.8 MB tensors (``tests/bench/bench_router_nginx.py``).

Clients are bounded before they cost anything: the request line and header
lines are counted on the raw bytes *before* httptools sees them (it keeps an
unfinished header line in memory however long it grows), a head over its limits
is answered 414/431 at once, a head or body that arrives too slowly 408, a body
over ``max_body`` 413 as soon as it crosses the limit, and client connections
beyond ``max_connections`` 503. Each refusal half-closes and drains briefly, so
a client still sending reads its answer instead of a reset.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections import deque
from email.utils import formatdate
from http import HTTPStatus
from collections.abc import Sequence
from typing import Any

import httptools
import orjson

from router import errors
from router.app import Body, Exchange, Message, RouterApp
from router.upstream import StreamedBody

log = logging.getLogger("grayroute.router.http")

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_STATUS_LINES: dict[int, bytes] = {}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_BAD_REQUEST_BODY = b'{"error":{"code":"bad_request","message":"malformed HTTP request","details":{}}}'
_BAD_REQUEST = (b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(_BAD_REQUEST_BODY), _BAD_REQUEST_BODY))


# How long, and how much of, a refused connection's input is drained after its answer:
# closing with unread input makes the kernel send a reset, which can destroy the answer
# before the client reads it. Bounded in bytes too: 20 clients pushing at loopback speed
# into draining connections held other requests up by ~0.4 s (uvloop reads up to 8 MiB
# per socket per loop pass); past the budget the client waits for the close instead.
_LINGER = 2.0
_DRAIN = 64 * 1024
_SHEDDING = 1024  # connections over the cap answered at once; past it a flood is just closed
# A body at least this long, with a declared length, is read past the parser and forwarded as it
# arrives (``StreamedBody``). Below it the parser's one copy is cheaper than the extra bookkeeping.
_RAW_BODY = 64 * 1024


def _refusal(status: int, code: str, message: str, details: dict[str, Any]) -> bytes:
    """A complete close-delimited answer, built once per limit."""
    body = orjson.dumps({"error": {"code": code, "message": message, "details": details}})
    return (_status_line(status) + b"content-type: application/json\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body))


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing and answer ``answer``."""

    def __init__(self, answer: bytes) -> None:
        super().__init__()
        self.answer = answer


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))
    return line


class _Clock:
    """The Date header, formatted once per second."""

    def __init__(self) -> None:
        self.second = 0
        self.header = b""

    def date(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.header = b"date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self.header


class _Request:
    __slots__ = ("body", "early", "headers", "keep_alive", "method", "target")

    def __init__(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
                 body: bytes | list[bytes | memoryview] | StreamedBody, keep_alive: bool, early: bool) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.early = early  # dispatched before its (oversized) body: the connection closes after


class _Connection(asyncio.Protocol):
    __slots__ = (
        "busy",
        "chunks",
        "declared",
        "client",
        "closed",
        "cr",
        "deadline",
        "dispatched_early",
        "head",
        "head_parsed",
        "headers",
        "idle_since",
        "in_head",
        "keep_alive_seen",
        "line",
        "lines",
        "method_seen",
        "next_request",
        "parser",
        "queue",
        "raw",
        "raw_dispatched",
        "refusal",
        "server",
        "shed",
        "size",
        "transport",
        "url",
    )

    def __init__(self, server: LeanServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.queue: deque[_Request] = deque()
        self.busy = False
        self.closed = False
        self.idle_since = time.monotonic()
        self.next_request: asyncio.Future[_Request | None] | None = None  # set while the connection's task waits
        self.client: tuple[str, int] | None = None
        self.dispatched_early = False  # answered before the request ended: input is discarded
        # the raw-byte head scan (see _head_fits): bytes of the head, of its current line,
        # complete lines, and whether the last read ended in CR
        self.in_head = True
        self.head = 0
        self.line = 0
        self.lines = 0
        self.cr = False
        self.head_parsed = -1  # head bytes the parser reported, for a head the scan missed; else -1
        self.deadline = server.loop.time() + server.header_timeout  # 0: no read deadline running
        self.refusal: bytes | None = None  # owed after the answers queued before it
        self.shed = False  # over the connection cap: answered 503, never served
        self.declared = 0  # the current request's declared body length when large enough for ``_RawBody``
        self.raw: StreamedBody | None = None  # set while such a body is read past the parser
        self.raw_dispatched = False  # its request is in the app already (else it is dispatched once whole)
        # what the parser said at the head of a body read past it (it cannot say so afterwards)
        self.method_seen = b""
        self.keep_alive_seen = True

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        server = self.server
        if len(server.connections) >= server.max_connections:
            # Answered rather than left in the listen backlog: the client (or its load
            # balancer) learns at once that this router is full and can go elsewhere.
            self.dispatched_early = True
            self.deadline = 0.0
            if server.shedding >= _SHEDDING:
                transport.close()  # a flood: even a lingering answer per connection is too much
                return
            server.shedding += 1
            self.shed = True
            self._linger(server.too_many_connections)
            return
        peer = transport.get_extra_info("peername")
        self.client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.shed:
            self.shed = False
            self.server.shedding -= 1
        self.closed = True
        self.server.connections.discard(self)
        if self.raw is not None:
            self.raw.abort(errors.BodyIncomplete("the client closed the connection before its body ended"))
            self.raw = None
        waiter = self.next_request
        if waiter is not None:
            self.next_request = None
            waiter.set_result(None)  # its task ends

    def _raw_complete(self, raw: StreamedBody) -> None:
        """The body read past the parser is whole; a new parser reads the next request."""
        self.raw = None
        self.declared = 0
        self.in_head = True
        self.deadline = 0.0
        # the old parser still waits for the body it never saw
        self.parser = httptools.HttpRequestParser(self)
        if self.raw_dispatched:
            self.raw_dispatched = False
            return
        # pipelined behind a request in flight: dispatched whole, in its turn
        self._dispatch(_Request(self.method_seen, self.url, self.headers, raw.pieces, self.keep_alive_seen, False))

    def data_received(self, data: bytes) -> None:
        if self.dispatched_early:
            # answered already (an oversized body, a refusal): the connection is closing
            self.size += len(data)
            if self.size > _DRAIN and self.transport is not None:
                self.transport.pause_reading()  # the close timer ends it; reading on costs CPU for nothing
            return
        raw = self.raw
        if raw is not None:  # a large body, past the parser
            left = raw.left
            if len(data) <= left:
                if raw.add(data):
                    self._raw_complete(raw)
                return
            raw.add(memoryview(data)[:left])  # the body ends inside this read; the rest is the next request
            self._raw_complete(raw)
            data = data[left:]
        if self.in_head:
            # the usual head: whole in this read and shorter than one line's limit
            if not self.head and 0 < data.find(b"\r\n\r\n") <= self.server.short_head:
                self.in_head = False
            elif not self._head_fits(data):
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject()
            return
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _Refused):
                self._refuse(exc.__context__.answer)
            else:
                self._reject()
            return
        if self.declared and not self.dispatched_early:
            # a large body is still to come: read it past the parser, and forward it as it comes
            # unless a request before it is still in flight (answers keep request order)
            self.raw = raw = StreamedBody(self.chunks, self.declared - self.size, self.server.loop.create_future())
            self.chunks = []
            if not self.busy:
                self.raw_dispatched = True
                self._dispatch(_Request(self.method_seen, self.url, self.headers, raw, self.keep_alive_seen, False))

    def _head_fits(self, data: bytes) -> bool:
        """Counts the request head on the raw bytes before the parser buffers them.

        False once a limit is crossed (the answer is on its way). The head is
        walked line by line, across reads (``data_received`` lets the usual short
        head through with one ``find``).
        """
        server = self.server
        if not self.head and not self.deadline:
            self.deadline = server.loop.time() + server.header_timeout
        size = len(data)
        start = 0
        while start < size:
            newline = data.find(b"\n", start)
            stop = size if newline < 0 else newline + 1
            length = stop - start
            self.line += length
            self.head += length
            if self.line > server.max_line:
                return self._refuse(server.header_line_too_long if self.lines else server.uri_too_long)
            if self.head > server.max_head:
                return self._refuse(server.header_too_large)
            if newline < 0:
                self.cr = data[-1] == 13
                return True
            blank = self.line == 1 or (self.line == 2 and (data[newline - 1] == 13 if newline else self.cr))
            if blank:
                if self.lines:  # the empty line that ends the head; what follows is body
                    self.in_head = False
                    self.head = self.line = self.lines = 0
                    return True
                # an empty line before the request line is allowed (RFC 9112 2.2)
            else:
                self.lines += 1
                if self.lines > server.max_headers + 1:  # the request line and max_headers headers
                    return self._refuse(server.too_many_headers)
            self.line = 0
            start = stop
        self.cr = False
        return True

    def _refuse(self, answer: bytes) -> bool:
        """Answer a request that broke a limit and close; queued answers go first."""
        self.dispatched_early = True
        self.deadline = 0.0
        raw = self.raw
        if raw is not None and self.raw_dispatched:
            # its body was being forwarded: the app answers (408) for it, then the connection closes
            self.raw = None
            raw.abort(errors.BodyIncomplete(f"request body not received within {self.server.body_timeout:g} s",
                                            {"limit_seconds": self.server.body_timeout}))
            if self.transport is not None:
                self.transport.pause_reading()
            return False
        if self.busy:
            self.refusal = answer  # _run writes it after the answers owed before it
            if self.transport is not None:
                self.transport.pause_reading()
        else:
            self._linger(answer)
        return False

    def _linger(self, answer: bytes) -> None:
        """Write ``answer``, half-close, and drain input briefly before closing.

        A client still sending (an oversized header or body) would otherwise get a
        reset, and with it lose the answer it has not read yet.
        """
        transport = self.transport
        if transport is None or self.closed:
            return
        self.dispatched_early = True
        self.size = 0  # from here on: bytes drained
        if answer:
            transport.write(answer)
        if transport.can_write_eof():
            transport.write_eof()
        transport.resume_reading()
        self.server.loop.call_later(_LINGER, self.close)

    def eof_received(self) -> bool | None:
        if self.dispatched_early:
            self.close()  # the client read its refusal and closed: no need to wait any longer
        return None

    def _reject(self) -> None:
        if self.transport is not None and not self.busy:
            self.transport.write(_BAD_REQUEST)
        self.close()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.declared = 0
        self.url = b""
        self.headers = []
        self.chunks = []
        self.size = 0
        # A head that starts in the same read as the end of the previous request was not
        # scanned: the callbacks check its lines on what the parser reports instead.
        self.head_parsed = 0 if self.in_head and not self.head else -1

    def on_url(self, url: bytes) -> None:
        self.url += url
        if self.head_parsed >= 0 and len(self.url) > self.server.max_line:
            raise _Refused(self.server.uri_too_long)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))
        if self.head_parsed >= 0:
            server = self.server
            length = len(name) + len(value) + 4  # ": " and CRLF
            self.head_parsed += length
            if length > server.max_line:
                raise _Refused(server.header_line_too_long)
            if self.head_parsed > server.max_head:
                raise _Refused(server.header_too_large)

    def on_headers_complete(self) -> None:
        server = self.server
        if len(self.headers) > server.max_headers:  # the fast path in data_received does not count
            raise _Refused(server.too_many_headers)
        self.in_head = False
        if self.head:  # the parser ended the head before the scan saw its blank line
            self.head = self.line = self.lines = 0
        self.deadline = server.loop.time() + server.body_timeout
        limit = server.max_body
        chunked = False
        for name, value in self.headers:
            if name == b"content-length" and value.isdigit():
                length = int(value)
                if length > limit:
                    # answer now (the app sees the declared length), never read the body
                    self.dispatched_early = True
                    self.deadline = 0.0
                    self._dispatch(_Request(self.parser.get_method(), self.url, self.headers, b"", False, True))
                    return
                if length >= _RAW_BODY:
                    self.declared = length
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"expect" and value.lower() == b"100-continue" and self.transport is not None:
                self.transport.write(_CONTINUE)
        if self.declared:
            if chunked:  # the parser rejects the pair; leave it to the parser
                self.declared = 0
            else:
                parser = self.parser
                self.method_seen = parser.get_method()
                self.keep_alive_seen = parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        if self.dispatched_early:
            return
        # buffer at most max_body + 1 bytes: enough for the app to answer 413, never more in memory
        room = self.server.max_body + 1 - self.size
        self.size += len(body)
        if room > 0:
            self.chunks.append(body if len(body) <= room else body[:room])
        if self.size > self.server.max_body:
            # a chunked body crossed the limit: answer now, not after an upload of any length
            self.dispatched_early = True
            self.deadline = 0.0
            body = b"".join(self.chunks)
            self.chunks = []
            self._dispatch(_Request(self.parser.get_method(), self.url, self.headers, body, False, True))

    def on_message_complete(self) -> None:
        self.declared = 0  # the body came whole with its head: nothing to read past the parser
        if self.dispatched_early:
            return
        self.in_head = True  # what follows is the next request's head
        self.deadline = 0.0  # until it starts (the keep-alive sweep covers the wait)
        chunks = self.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        keep_alive = self.parser.should_keep_alive()
        self._dispatch(_Request(self.parser.get_method(), self.url, self.headers, body, keep_alive, False))

    def _dispatch(self, request: _Request) -> None:
        if self.busy:
            self.queue.append(request)  # pipelined: answers must keep request order
            if self.transport is not None:
                self.transport.pause_reading()
            return
        self.busy = True
        waiter = self.next_request
        if waiter is not None:
            self.next_request = None
            waiter.set_result(request)  # the connection's task is waiting for it
        else:
            self.server.loop.create_task(self._serve(request))

    async def _serve(self, request: _Request | None) -> None:
        """One task per connection, not per request: a keep-alive connection's next request is handed to the
        task that served the last one (a task costs several times a future: about 5% of a small request)."""
        while request is not None and await self._run(request):
            self.next_request = waiter = self.server.loop.create_future()
            request = await waiter  # None once the connection is gone

    async def _run(self, request: _Request) -> bool:
        """Serve ``request`` and any pipelined behind it; True when the connection is idle and open."""
        server = self.server
        server.in_flight += 1
        try:
            while True:
                await self._cycle(request)
                body = request.body
                if isinstance(body, StreamedBody):
                    if not body.complete:
                        # answered before its body ended (an error, or a backend that did not wait for
                        # it): the connection is reusable once the rest is in
                        await body.finished
                    body.release()  # a mirror keeps its own reference to the pieces
                    if not body.complete:
                        self.close()  # too slow, or gone
                        return False
                if self.closed or not request.keep_alive:
                    if request.early:
                        self._linger(b"")  # the client may still be sending the body we refused
                    else:
                        self.close()
                    return False
                if not self.queue:
                    break
                request = self.queue.popleft()
            if self.refusal is not None:
                self._linger(self.refusal)
                return False
            self.busy = False
            self.idle_since = time.monotonic()
            if self.transport is None or self.closed:
                return False
            self.transport.resume_reading()
            return True
        finally:
            server.in_flight -= 1
            if server.in_flight == 0 and server.drained is not None and not server.drained.done():
                server.drained.set_result(None)

    async def _cycle(self, request: _Request) -> None:
        exchange = _Exchange(self, request)
        try:
            await self.server.app.handle(exchange)
        except Exception:
            log.exception("unhandled error in the router app")
            if not exchange.replied and not self.closed and self.transport is not None:
                self.transport.write(_status_line(500) + b"content-length: 0\r\nconnection: close\r\n\r\n")
            request.keep_alive = False
            return
        if not exchange.replied:
            # the app returned without an answer: the connection cannot be reused
            request.keep_alive = False


class _Exchange(Exchange):
    """A request as the app reads it, answered straight on its connection."""

    __slots__ = ("conn", "replied", "request")

    def __init__(self, conn: _Connection, request: _Request) -> None:
        target = request.target
        path = target.partition(b"?")[0]
        if b"%" in path:
            from urllib.parse import unquote_to_bytes

            decoded = unquote_to_bytes(path).decode("utf-8", "replace")
        else:
            decoded = path.decode("latin-1")
        client = conn.client
        super().__init__(request.method.decode("latin-1"), decoded, target, request.headers,
                         client[0] if client is not None else None, "http")
        self.conn = conn
        self.request = request
        self.replied = False

    async def body(self) -> Body | StreamedBody | None:
        request = self.request
        body = request.body
        if isinstance(body, StreamedBody):
            return body
        if request.early:  # dispatched as its body crossed the limit (``on_body``)
            limit = self.conn.server.max_body
            raise errors.BodyTooLarge(f"request body is over the {limit}-byte limit", {"limit": limit})
        if isinstance(body, list):
            return [piece for piece in body if piece]
        return [body] if body else []

    async def reply(self, status: int, headers: list[tuple[bytes, bytes]], parts: Sequence[bytes | memoryview]) -> None:
        conn = self.conn
        transport = conn.transport
        if self.replied or conn.closed or transport is None:
            return
        self.replied = True
        request = self.request
        size = len(parts[0]) if len(parts) == 1 else sum(map(len, parts))
        head = [_status_line(status), conn.server.clock.date()]
        for name, value in headers:
            head += (name, b": ", value, b"\r\n")
        head.append(b"content-length: %d\r\n" % size)
        if not request.keep_alive:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        if request.method == b"HEAD" or not size:
            transport.write(b"".join(head))
        elif size < 65536:
            transport.write(b"".join((*head, *parts)))  # one segment for a small answer
        else:
            transport.writelines((b"".join(head), *parts))  # a large one as it arrived: never joined


class LeanServer:
    """Serves ``app`` on an already bound socket until SIGTERM/SIGINT."""

    def __init__(
        self,
        app: RouterApp,
        *,
        max_body: int,
        max_line: int = 8 * 1024,
        max_head: int = 64 * 1024,
        max_headers: int = 100,
        header_timeout: float = 10.0,
        body_timeout: float = 60.0,
        max_connections: int = 4096,
        keep_alive_timeout: float = 75.0,
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.max_line = max_line
        self.short_head = max_line - 4  # a head this short (to its blank line) has no line over the limit
        self.max_head = max_head
        self.max_headers = max_headers
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.max_connections = max_connections
        self.keep_alive_timeout = keep_alive_timeout
        self.uri_too_long = _refusal(414, "uri_too_long", f"request line over the {max_line}-byte limit",
                                     {"limit": max_line})
        self.header_line_too_long = _refusal(431, "header_too_large", f"a header line over the {max_line}-byte limit",
                                             {"limit": max_line})
        self.header_too_large = _refusal(431, "header_too_large", f"request head over the {max_head}-byte limit",
                                         {"limit": max_head})
        self.too_many_headers = _refusal(431, "header_too_large", f"more than {max_headers} headers",
                                         {"limit": max_headers})
        self.head_timed_out = _refusal(408, "request_timeout", f"request head not received within {header_timeout:g} s",
                                       {"limit_seconds": header_timeout})
        self.body_timed_out = _refusal(408, "request_timeout", f"request body not received within {body_timeout:g} s",
                                       {"limit_seconds": body_timeout})
        self.too_many_connections = _refusal(503, "too_many_connections",
                                             f"this router holds its {max_connections} connections; retry elsewhere",
                                             {"limit": max_connections})
        self.shedding = 0  # connections over the cap still draining their 503
        self.loop = asyncio.get_running_loop()
        self.connections: set[_Connection] = set()
        self.clock = _Clock()
        self.address: tuple[str, int] | None = None
        self.in_flight = 0
        self.drained: asyncio.Future[None] | None = None
        self._stop = asyncio.Event()

    async def serve(self, sock: socket.socket) -> None:
        messages: asyncio.Queue[Message] = asyncio.Queue()
        startup: asyncio.Future[Message] = self.loop.create_future()
        shutdown: asyncio.Future[Message] = self.loop.create_future()

        async def receive() -> Message:
            return await messages.get()

        async def send(message: Message) -> None:
            target = startup if message["type"].startswith("lifespan.startup") else shutdown
            if not target.done():
                target.set_result(message)

        lifespan = self.loop.create_task(self.app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send))
        await messages.put({"type": "lifespan.startup"})
        result = await startup
        if result["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"router startup failed: {result.get('message', '')}")

        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, self._stop.set)
        name = sock.getsockname()
        self.address = (str(name[0]), int(name[1]))
        server = await self.loop.create_server(lambda: _Connection(self), sock=sock, backlog=2048)
        sweeper = self.loop.create_task(self._sweep())
        try:
            await self._stop.wait()
        finally:
            server.close()
            sweeper.cancel()
            # finish what is in flight (bounded), then drop idle keep-alive connections
            if self.in_flight:
                self.drained = self.loop.create_future()
                try:
                    await asyncio.wait_for(self.drained, 10.0)
                except TimeoutError:
                    log.warning("%d requests still in flight at shutdown", self.in_flight)
            for conn in list(self.connections):
                conn.close()
            await messages.put({"type": "lifespan.shutdown"})
            await asyncio.wait_for(shutdown, 15.0)
            await lifespan

    async def _sweep(self) -> None:
        """Close idle keep-alive connections; answer 408 to reads past their deadline.

        One pass over the connections per tick instead of a timer per request: the
        hot path only stores a number. A deadline is kept to within a quarter of
        the shorter timeout (at most a second).
        """
        tick = min(1.0, self.keep_alive_timeout / 4, self.header_timeout / 4, self.body_timeout / 4)
        while True:
            await asyncio.sleep(tick)
            now = self.loop.time()
            horizon = time.monotonic() - self.keep_alive_timeout
            for conn in list(self.connections):
                if conn.deadline and conn.deadline < now and not conn.dispatched_early:
                    conn._refuse(self.head_timed_out if conn.in_head else self.body_timed_out)
                elif not conn.busy and conn.idle_since < horizon and not conn.dispatched_early:
                    conn.close()
