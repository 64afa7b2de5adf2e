"""The data plane: an app that routes and proxies the KServe v2 inference API.

Served paths::

    POST /v2/models/{m}[/versions/{v}]/infer     routed per docs/routing.md, proxied
    GET  /v2/models/{m}[/versions/{v}][/ready]   likewise (metadata and readiness)
    GET  /v2/health/live | /v2/health/ready      the router itself (ready = has a snapshot)
    GET  /metrics                                Prometheus text

No framework: per request the work is one pass over the headers, the decision,
one upstream exchange and one ``reply`` (README has the measurements). The
router's own server (``router.http``) hands each request over as an
``Exchange`` built straight from its parser; ``RouterApp`` is also an ASGI app
(``AsgiExchange``), so any ASGI server can run it (``--http uvicorn``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis

from router import errors
from router.budget import RetryBudget
from router.config import SnapshotSource
from router.metrics import NOWHERE, Recorder, SharedDirectory, Where, merge_dumps, render
from router.parity import SHADOW_DUMP_KEY, ParityRecorder, ParityReporter, shadow_prometheus
from router.reporter import StatsReporter
from router.routing import Decision, Route, decide
from router.settings import CREDENTIAL_HEADERS, RouterSettings
from router.shadow import Mirror
from router.stats import NO_BACKEND, SHED
from router.table import Backends, ModelTable, RoutingTable, VersionGroup
from router.upstream import Backend, Response, StreamedBody

log = logging.getLogger("grayroute.router")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Never forwarded in either direction: connection-level, or re-framed by us.
_HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate", b"proxy-authorization",
    b"te", b"trailer", b"transfer-encoding", b"upgrade", b"host", b"content-length", b"expect",
})
_RESPONSE_DROP = _HOP_BY_HOP | {b"date", b"server"}  # the HTTP server writes its own
# Headers the router writes itself. A client's copy is dropped (x-grayroute-* would let it
# spoof routing and shadow markers; X-Forwarded-For is appended to, never passed as sent),
# and a backend's x-grayroute-* answer headers are dropped so the router's own win.
_OWN = b"x-grayroute-"
_FORWARDED_FOR = b"x-forwarded-for"
_REPLACED = frozenset({_FORWARDED_FOR, b"x-forwarded-proto"})
_JSON = [(b"content-type", b"application/json")]
_MODELS_PREFIX = "/v2/models/"
_ACTIONS = {"": "GET", "ready": "GET", "infer": "POST", "config": "GET"}
_MAX_RETRIES = 2  # per request: another backend of the version, then the fallback version


def _error_body(exc: errors.RouterError) -> bytes:
    # KServe v2 says the error is a string; code and details ride along as extra fields.
    return orjson.dumps({"error": exc.message, "code": exc.code, "details": exc.details})


Body = list[bytes | memoryview]  # a whole request body, as the pieces it arrived in


class Exchange:
    """One request as the app reads it, and the one way it is answered.

    ``router.http`` builds these straight from its parser: no ASGI scope, no
    ``receive``/``send`` closures and no message dicts per request, which were
    about a tenth of a small request's CPU. ``AsgiExchange`` adapts ASGI.
    """

    __slots__ = ("client", "headers", "method", "path", "scheme", "target")

    def __init__(self, method: str, path: str, target: bytes, headers: list[tuple[bytes, bytes]],
                 client: str | None, scheme: str) -> None:
        self.method = method
        self.path = path  # percent-decoded
        self.target = target  # as sent: raw path and query, forwarded as it is
        self.headers = headers  # lower-case names
        self.client = client  # the peer's address
        self.scheme = scheme

    async def body(self) -> Body | StreamedBody | None:
        """The whole body, or one still arriving (forwarded as it comes); None: the client went away.
        Raises ``errors.BodyTooLarge`` past the limit."""
        raise NotImplementedError

    async def reply(self, status: int, headers: list[tuple[bytes, bytes]], parts: Sequence[bytes | memoryview]) -> None:
        """The whole answer. The server frames it (content-length) and adds its own date and connection."""
        raise NotImplementedError


class AsgiExchange(Exchange):
    __slots__ = ("max_body", "receive", "send")

    def __init__(self, scope: Scope, receive: Receive, send: Send, max_body: int) -> None:
        target = scope.get("raw_path") or scope["path"].encode()
        if scope["query_string"]:
            target += b"?" + scope["query_string"]
        client = scope.get("client")
        super().__init__(scope["method"], scope["path"], target, scope["headers"], client[0] if client else None,
                         scope.get("scheme", "http"))
        self.receive = receive
        self.send = send
        self.max_body = max_body

    async def body(self) -> Body | None:
        chunks: Body = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] != "http.request":
                return None
            chunk: bytes | memoryview = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise errors.BodyTooLarge(f"request body is over the {self.max_body}-byte limit",
                                          {"limit": self.max_body})
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body"):
                return chunks

    async def reply(self, status: int, headers: list[tuple[bytes, bytes]], parts: Sequence[bytes | memoryview]) -> None:
        size = len(parts[0]) if len(parts) == 1 else sum(map(len, parts))
        send = self.send
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, (b"content-length", str(size).encode())]})
        if len(parts) <= 1:
            await send({"type": "http.response.body", "body": parts[0] if parts else b""})
            return
        # a large answer, as it arrived: one message per piece, never joined (content-length frames it)
        last = len(parts) - 1
        for index, part in enumerate(parts):
            await send({"type": "http.response.body", "body": part, "more_body": index < last})


class RouterApp:
    def __init__(self, settings: RouterSettings) -> None:
        self.settings = settings
        self.router_id = settings.identity()  # host:pid unless configured: one per worker process
        self.recorder = Recorder()
        self.table: RoutingTable | None = None
        self.backends: Backends | None = None
        self.source: SnapshotSource | None = None
        self.reporter: StatsReporter | None = None
        self.parity = ParityRecorder()
        self.mirror = Mirror(self.parity, max_inflight=settings.shadow_max_inflight,
                             max_bytes=settings.shadow_max_bytes, timeout=settings.shadow_timeout)
        self.parity_reporter: ParityReporter | None = None
        self.redis: aioredis.Redis | None = None
        self.shared = SharedDirectory(settings.metrics_dir) if settings.metrics_dir else None
        self._tasks: list[asyncio.Task[None]] = []
        self.max_body = settings.max_body_bytes
        self.timeout = settings.upstream_timeout
        self.eject_after = settings.eject_after
        self.budget = RetryBudget(settings.retry_budget)
        # credentials reach backends only where the operator says so (--forward-header)
        self.not_forwarded = _HOP_BY_HOP | _REPLACED | {
            name.encode() for name in CREDENTIAL_HEADERS - set(settings.forward_headers)
        }

    # lifecycle
    def _swap(self, table: RoutingTable) -> None:
        self.table = table  # one assignment: requests see the old table or the new one
        self.recorder.revision = table.revision
        self.recorder.defaults = {name: m.routing.default_version for name, m in table.models.items()
                                  if m.routing.default_version is not None}

    async def startup(self) -> None:
        settings = self.settings
        token = settings.token.get_secret_value() if settings.token else None
        if settings.redis_url:
            self.redis = aioredis.from_url(
                settings.redis_url, socket_connect_timeout=1.0, health_check_interval=10
            )
        self.backends = Backends(connect_timeout=settings.connect_timeout,
                                 max_response=settings.max_response_bytes,
                                 max_connections=settings.max_connections,
                                 max_pending=settings.max_pending,
                                 queue_timeout=settings.queue_timeout,
                                 max_ejected_share=settings.max_ejected_share,
                                 on_event=self.recorder.backend_event)
        self.recorder.census = self.backends.census
        self.source = SnapshotSource(
            backends=self.backends,
            on_swap=self._swap,
            control_plane=settings.control_plane,
            token=token,
            redis=self.redis,
            snapshot_file=settings.snapshot_file,
            poll_interval=settings.poll_interval,
        )
        await self.source.start()
        if self.table is None:
            log.warning("no valid snapshot yet: answering 503 until one arrives")
        self.reporter = StatsReporter(
            recorder=self.recorder,
            router_id=self.router_id,
            interval=settings.stats_interval,
            redis=self.redis,
            control_plane=settings.control_plane,
            token=token,
            spool=settings.stats_spool,
        )
        self.reporter.start()
        self.parity_reporter = ParityReporter(
            recorder=self.parity, router_id=self.router_id, interval=settings.stats_interval,
            redis=self.redis, control_plane=settings.control_plane, token=token,
        )
        self.parity_reporter.start()
        if self.shared is not None:
            self._tasks.append(asyncio.get_running_loop().create_task(self._share_metrics()))
        # Everything loaded so far lives for the whole process: keep it out of the
        # collector's full passes, which otherwise show up as multi-millisecond tail latency.
        gc.collect()
        gc.freeze()

    async def shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.reporter is not None:
            await self.reporter.stop()
        await self.mirror.stop()
        if self.parity_reporter is not None:
            await self.parity_reporter.stop()
        if self.source is not None:
            await self.source.stop()
        if self.backends is not None:
            self.backends.close()
        if self.redis is not None:
            await self.redis.aclose()

    async def _share_metrics(self) -> None:
        assert self.shared is not None
        while True:
            await asyncio.sleep(1.0)
            try:
                # the shadow counters travel with the rest, so any worker's /metrics shows every worker's
                dump = {**self.recorder.dump(), SHADOW_DUMP_KEY: self.parity.total_rows()}
                await asyncio.to_thread(self.shared.write, dump)
            except OSError as exc:
                log.warning("cannot share metrics: %s", exc)

    async def handle(self, exchange: Exchange) -> None:
        path = exchange.path
        if path.startswith(_MODELS_PREFIX):
            await self._model_request(exchange, path)
        else:
            await self._own_request(exchange, path)

    # ASGI
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.handle(AsgiExchange(scope, receive, send, self.max_body))
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("router startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _own_request(self, exchange: Exchange, path: str) -> None:
        if path == "/v2/health/live":
            await _send(exchange, 200, _JSON, b'{"live":true}')
        elif path == "/v2/health/ready":
            table = self.table
            if table is None:
                await _send_error(exchange, errors.NotReady("no valid routing snapshot yet"))
            else:
                # which worker answered: operators (and tests) can tell a multi-worker router's processes apart
                body = orjson.dumps({"ready": True, "revision": table.revision, "router": self.router_id})
                await _send(exchange, 200, _JSON, body)
        elif path == "/metrics":
            dumps = [self.recorder.dump()]
            if self.shared is not None:
                dumps += await asyncio.to_thread(self.shared.others)
            shadow_rows = [self.parity.total_rows(), *(d.get(SHADOW_DUMP_KEY, []) for d in dumps[1:])]
            text = render(merge_dumps(dumps) if len(dumps) > 1 else dumps[0]) + shadow_prometheus(shadow_rows)
            await _send(exchange, 200, [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")], text)
        else:
            await _send_error(exchange, errors.NotFound(f"no route for {path}"))

    async def _model_request(self, exchange: Exchange, path: str) -> None:
        started = time.perf_counter()
        parts = path[len(_MODELS_PREFIX):].split("/")
        model_name = parts[0]
        explicit: str | None = None
        if len(parts) >= 3 and parts[1] == "versions":
            explicit = parts[2]
            action = parts[3] if len(parts) == 4 else None if len(parts) > 4 else ""
        else:
            action = parts[1] if len(parts) == 2 else None if len(parts) > 2 else ""
        method = exchange.method
        try:
            if not model_name or action is None or action not in _ACTIONS:
                raise errors.NotFound(f"no route for {path}")
            if _ACTIONS[action] != method:
                raise errors.MethodNotAllowed(f"{method} {path}: use {_ACTIONS[action]}")
            table = self.table
            if table is None:
                raise errors.NotReady("no valid routing snapshot yet")
            model = table.models.get(model_name)
            if model is None:
                raise errors.UnknownModel(f"model {model_name!r} is not served", {"model": model_name})
            await self._proxy(exchange, model, explicit, started)
        except errors.RouterError as exc:
            # unknown names share one label: clients must not be able to mint time series
            table = self.table
            known = table is not None and model_name in table.models
            self.recorder.refused(model_name if known else "", exc.status, exc.code)
            await _send_error(exchange, exc)

    async def _proxy(self, exchange: Exchange, model: ModelTable, explicit: str | None, started: float) -> None:
        # one pass: headers the decision reads, headers forwarded, the declared length
        wanted = model.wanted
        decision_headers: dict[str, str] = {}
        forwarded: list[tuple[bytes, bytes]] = []
        declared = 0
        hops: list[bytes] = []
        not_forwarded = self.not_forwarded
        for name, value in exchange.headers:
            if name in wanted:
                try:  # keys are hashed as UTF-8 (spec); clients send them as UTF-8 bytes
                    decision_headers[name.decode("latin-1")] = value.decode()
                except UnicodeDecodeError:
                    decision_headers[name.decode("latin-1")] = value.decode("latin-1")
            if name not in not_forwarded:
                if not name.startswith(_OWN):
                    forwarded.append((name, value))
            elif name == b"content-length":
                declared = int(value) if value.isdigit() else 0
            elif name == _FORWARDED_FOR:
                hops.append(value)
        client = exchange.client
        if client:
            hops.append(client.encode())
        if hops:
            forwarded.append((_FORWARDED_FOR, b", ".join(hops)))
        forwarded.append((b"x-forwarded-proto", b"https" if exchange.scheme == "https" else b"http"))
        if declared > self.max_body:
            raise errors.BodyTooLarge(
                f"request body of {declared} bytes is over the {self.max_body}-byte limit",
                {"limit": self.max_body},
            )
        body = await exchange.body()  # a large one still arriving, forwarded as it comes (``router.http``)
        if body is None:
            return  # the client went away

        ready: frozenset[str] = model.ready
        decision = decide(model.routing, decision_headers, ready, explicit_version=explicit)
        target = exchange.target
        method = exchange.method
        tried: list[Backend] = []
        retries = 0
        failure: errors.UpstreamError | None = None
        budget = self.budget
        budget.deposit()
        while True:
            version = decision.version
            if version is None:
                if decision.route is Route.UNKNOWN_VERSION and explicit not in model.groups:
                    raise errors.NoSuchVersion(
                        f"no such version: model {model.name!r} has no version {explicit!r}",
                        {"model": model.name, "version": explicit},
                    )
                # the assigned version counts the failure: the last retried one's kind, else "no backend"
                self._unserved(model, decision, explicit, started, failure.kind if failure is not None else NO_BACKEND)
                if failure is not None:
                    raise failure  # what went wrong says more than "no backend left"
                if decision.route is Route.UNKNOWN_VERSION:
                    raise errors.UnknownVersion(
                        f"version {explicit!r} of model {model.name!r} has no ready backend",
                        {"model": model.name, "version": explicit},
                    )
                raise errors.NoBackend(
                    f"no ready backend for model {model.name!r}",
                    {"model": model.name, "version": decision.chosen, "default_version": model.routing.default_version},
                )
            group = model.groups[version]
            backend = group.pick(tried)
            if backend is None:
                # every live backend of this version failed this request: decide again without it
                ready = ready - {version}
                decision = decide(model.routing, decision_headers, ready, explicit_version=explicit)
                continue
            where = group.where.get(backend, NOWHERE)
            if group.panic:
                self.recorder.panicked(model.name, version)
            try:
                response = await backend.request(method, target, forwarded, body, self.timeout)
            except (errors.ConnectError, errors.BackendClosed) as exc:
                # no answer came: another backend or the fallback version may take it, within the budget.
                # A closed connection may have taken the request to an engine that died with it; inference
                # is a pure function of its inputs, so sending it again costs load, never a doubled effect.
                # Timeouts are not retried: a slow engine stays slow, and a second copy doubles its work.
                self._upstream_failed(model, group, version, backend, exc, where)
                tried.append(backend)
                if retries < _MAX_RETRIES:
                    if budget.withdraw():
                        retries += 1
                        failure = exc
                        exc.details = {"model": model.name, "version": version}
                        self.recorder.retried(model.name, version, exc.kind)
                        continue
                    self.recorder.retry_denied(model.name, version)
                await self._failed(exchange, exc, model, decision, version, where, exc.kind, started)
                return
            except errors.Overloaded as exc:
                self.recorder.shed_load(model.name, version, exc.reason)
                await self._failed(exchange, exc, model, decision, version, where, SHED, started)
                return
            except errors.UpstreamError as exc:
                self._upstream_failed(model, group, version, backend, exc, where)
                await self._failed(exchange, exc, model, decision, version, where, exc.kind, started)
                return
            backend.failures = 0
            break

        route = decision.route_header
        await self._respond(exchange, response, version, route)
        # assigned: what the split, rule or explicit path chose, even when another version served
        self.recorder.observe(
            model.name, decision.chosen or version, version, where, route, response.status,
            time.perf_counter() - started,
        )
        shadow = model.shadow
        if shadow is not None and response.status == 200 and version != shadow.version and method == "POST":
            # the client has its answer: whatever happens to the mirror happens after it
            if isinstance(body, StreamedBody):
                body = body.pieces if body.complete else None  # answered before its end: nothing to mirror
            if body is not None and shadow.sampled(decision_headers.get(model.routing.key_header)):
                shadow_group = model.groups.get(shadow.version)
                mirror_backend = shadow_group.pick() if shadow_group is not None else None
                arch = model.arch
                key = (model.name, shadow.version, version, arch.get(backend.url, ""),
                       arch.get(mirror_backend.url, "") if mirror_backend is not None else "")
                self.mirror.offer(key, mirror_backend, method, target, forwarded, body, response)

    async def _failed(
        self, exchange: Exchange, exc: errors.RouterError, model: ModelTable, decision: Decision, version: str,
        where: Where, kind: str, started: float,
    ) -> None:
        """Answer a request the version it was routed to could not serve: it counts against the assigned
        version (with ``kind``), served by ``version`` at ``where``."""
        self.recorder.observe(
            model.name, decision.chosen or version, version, where, decision.route_header, exc.status,
            time.perf_counter() - started, kind,
        )
        exc.details = {"model": model.name, "version": version}
        await _send_error(exchange, exc, version, decision.route_header)

    def _unserved(
        self, model: ModelTable, decision: Decision, explicit: str | None, started: float, kind: str
    ) -> None:
        """No version could serve: the assigned one (if the snapshot knows it) counts the failure."""
        assigned = explicit if decision.route is Route.UNKNOWN_VERSION else decision.chosen
        if assigned is not None and assigned in model.groups:  # never a label a client made up
            self.recorder.unserved(model.name, assigned, decision.route.value, time.perf_counter() - started, kind)

    def _upstream_failed(
        self, model: ModelTable, group: VersionGroup, version: str, backend: Backend, exc: errors.UpstreamError,
        where: Where,
    ) -> None:
        self.recorder.upstream_error(model.name, version, where, exc.kind)
        group.failed(backend, exc, eject_after=self.eject_after)

    async def _respond(self, exchange: Exchange, response: Response, version: str, route: str) -> None:
        headers = [(b"x-grayroute-version", version.encode()), (b"x-grayroute-route", route.encode())]
        for pair in response.headers:
            name = pair[0].lower()
            if name not in _RESPONSE_DROP and not name.startswith(_OWN):
                headers.append(pair)
        await exchange.reply(response.status, headers, response.parts)  # as received: never joined


async def _send(exchange: Exchange, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await exchange.reply(status, headers, (body,))


async def _send_error(
    exchange: Exchange, exc: errors.RouterError, version: str | None = None, route: str | None = None
) -> None:
    headers = list(_JSON)
    if version is not None and route is not None:
        headers += [(b"x-grayroute-version", version.encode()), (b"x-grayroute-route", route.encode())]
    if exc.retry_after is not None:  # nothing reached a backend: safe to send again
        headers.append((b"retry-after", str(exc.retry_after).encode()))
    await _send(exchange, exc.status, headers, _error_body(exc))
