"""The data plane: a raw ASGI app that routes and proxies the KServe v2 inference API.

Served paths::

    POST /v2/models/{m}[/versions/{v}]/infer     routed per docs/routing.md, proxied
    GET  /v2/models/{m}[/versions/{v}][/ready]   likewise (metadata and readiness)
    GET  /v2/health/live | /v2/health/ready      the router itself (ready = has a snapshot)
    GET  /metrics                                Prometheus text

No framework: per request the work is one pass over the headers, the decision,
one upstream exchange and two ``send`` calls (README has the measurements).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
import redis.asyncio as aioredis

from router import errors
from router.config import SnapshotSource
from router.metrics import NOWHERE, Recorder, SharedDirectory, Where, merge_dumps, render
from router.reporter import StatsReporter
from router.routing import Decision, Route, decide
from router.settings import RouterSettings
from router.stats import NO_BACKEND
from router.table import Backends, ModelTable, RoutingTable
from router.upstream import Backend, Response

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
_RESPONSE_DROP = _HOP_BY_HOP | {b"date", b"server"}  # the ASGI server writes its own
_JSON = [(b"content-type", b"application/json")]
_MODELS_PREFIX = "/v2/models/"
_ACTIONS = {"": "GET", "ready": "GET", "infer": "POST", "config": "GET"}


def _error_body(exc: errors.RouterError) -> bytes:
    return orjson.dumps({"error": {"code": exc.code, "message": exc.message, "details": exc.details}})


class RouterApp:
    def __init__(self, settings: RouterSettings) -> None:
        self.settings = settings
        self.recorder = Recorder()
        self.table: RoutingTable | None = None
        self.backends: Backends | None = None
        self.source: SnapshotSource | None = None
        self.reporter: StatsReporter | None = None
        self.redis: aioredis.Redis | None = None
        self.shared = SharedDirectory(settings.metrics_dir) if settings.metrics_dir else None
        self._tasks: list[asyncio.Task[None]] = []
        self.max_body = settings.max_body_bytes
        self.timeout = settings.upstream_timeout
        self.eject_after = settings.eject_after

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
                                 max_response=settings.max_response_bytes)
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
            router_id=settings.identity(),
            interval=settings.stats_interval,
            redis=self.redis,
            control_plane=settings.control_plane,
            token=token,
        )
        self.reporter.start()
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
                await asyncio.to_thread(self.shared.write, self.recorder.dump())
            except OSError as exc:
                log.warning("cannot share metrics: %s", exc)

    # ASGI
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path: str = scope["path"]
            if path.startswith(_MODELS_PREFIX):
                await self._model_request(scope, receive, send, path)
            else:
                await self._own_request(scope, send, path)
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

    async def _own_request(self, scope: Scope, send: Send, path: str) -> None:
        if path == "/v2/health/live":
            await _send(send, 200, _JSON, b'{"live":true}')
        elif path == "/v2/health/ready":
            table = self.table
            if table is None:
                await _send_error(send, errors.NotReady("no valid routing snapshot yet"))
            else:
                body = orjson.dumps({"ready": True, "revision": table.revision})
                await _send(send, 200, _JSON, body)
        elif path == "/metrics":
            dumps = [self.recorder.dump()]
            if self.shared is not None:
                dumps += await asyncio.to_thread(self.shared.others)
            text = render(merge_dumps(dumps) if len(dumps) > 1 else dumps[0])
            await _send(send, 200, [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")], text)
        else:
            await _send_error(send, errors.NotFound(f"no route for {path}"))

    async def _model_request(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        started = time.perf_counter()
        parts = path[len(_MODELS_PREFIX):].split("/")
        model_name = parts[0]
        explicit: str | None = None
        if len(parts) >= 3 and parts[1] == "versions":
            explicit = parts[2]
            action = parts[3] if len(parts) == 4 else None if len(parts) > 4 else ""
        else:
            action = parts[1] if len(parts) == 2 else None if len(parts) > 2 else ""
        method: str = scope["method"]
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
            await self._proxy(scope, receive, send, model, explicit, started)
        except errors.RouterError as exc:
            # unknown names share one label: clients must not be able to mint time series
            table = self.table
            known = table is not None and model_name in table.models
            self.recorder.refused(model_name if known else "", exc.status, exc.code)
            await _send_error(send, exc)

    async def _proxy(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        model: ModelTable,
        explicit: str | None,
        started: float,
    ) -> None:
        # one pass: headers the decision reads, headers forwarded, the declared length
        wanted = model.wanted
        decision_headers: dict[str, str] = {}
        forwarded: list[tuple[bytes, bytes]] = []
        declared = 0
        for name, value in scope["headers"]:
            if name in wanted:
                try:  # keys are hashed as UTF-8 (spec); clients send them as UTF-8 bytes
                    decision_headers[name.decode("latin-1")] = value.decode()
                except UnicodeDecodeError:
                    decision_headers[name.decode("latin-1")] = value.decode("latin-1")
            if name not in _HOP_BY_HOP:
                forwarded.append((name, value))
            elif name == b"content-length":
                declared = int(value) if value.isdigit() else 0
        if declared > self.max_body:
            raise errors.BodyTooLarge(
                f"request body of {declared} bytes is over the {self.max_body}-byte limit",
                {"limit": self.max_body},
            )
        body = await self._read_body(receive)
        if body is None:
            return  # the client went away

        ready: frozenset[str] = model.ready
        decision = decide(model.routing, decision_headers, ready, explicit_version=explicit)
        target = scope.get("raw_path") or scope["path"].encode()
        if scope["query_string"]:
            target += b"?" + scope["query_string"]
        tried: list[Backend] = []
        stale_retries = 0
        while True:
            version = decision.version
            if version is None:
                self._unserved(model, decision, explicit, started)
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
                # every live backend of this version refused: decide again without it
                ready = ready - {version}
                decision = decide(model.routing, decision_headers, ready, explicit_version=explicit)
                continue
            where = group.where.get(backend, NOWHERE)
            try:
                response = await backend.request(scope["method"], target, forwarded, body, self.timeout)
            except errors.StaleConnection as exc:
                stale_retries += 1
                if stale_retries <= 2:
                    continue  # a kept-alive connection the backend had closed; nothing was processed
                await self._failed_answer(send, model, decision, version, where, backend, exc, started)
                return
            except errors.ConnectError as exc:
                self._upstream_failed(model, version, backend, exc, where)
                tried.append(backend)
                continue
            except errors.UpstreamError as exc:
                await self._failed_answer(send, model, decision, version, where, backend, exc, started)
                return
            backend.failures = 0
            break

        route = decision.route_header
        await self._respond(send, response, version, route)
        # assigned: what the split, rule or explicit path chose, even when another version served
        self.recorder.observe(
            model.name, decision.chosen or version, version, where, route, response.status,
            time.perf_counter() - started,
        )

    async def _failed_answer(
        self, send: Send, model: ModelTable, decision: Decision, version: str, where: Where, backend: Backend,
        exc: errors.UpstreamError, started: float,
    ) -> None:
        """The backend broke the exchange: count it against the assigned version and answer the error."""
        self._upstream_failed(model, version, backend, exc, where)
        self.recorder.observe(
            model.name, decision.chosen or version, version, where, decision.route_header, exc.status,
            time.perf_counter() - started, exc.kind,
        )
        exc.details = {"model": model.name, "version": version}
        await _send_error(send, exc, version, decision.route_header)

    def _unserved(self, model: ModelTable, decision: Decision, explicit: str | None, started: float) -> None:
        """No version could serve: the assigned one (if the snapshot knows it) counts the failure."""
        assigned = explicit if decision.route is Route.UNKNOWN_VERSION else decision.chosen
        if assigned is not None and assigned in model.groups:  # never a label a client made up
            self.recorder.unserved(model.name, assigned, decision.route.value, time.perf_counter() - started,
                                   NO_BACKEND)

    def _upstream_failed(
        self, model: ModelTable, version: str, backend: Backend, exc: errors.UpstreamError, where: Where
    ) -> None:
        self.recorder.upstream_error(model.name, version, where, exc.kind)
        backend.failed(exc, eject_after=self.eject_after)

    async def _read_body(self, receive: Receive) -> bytes | None:
        message = await receive()
        if message["type"] != "http.request":
            return None
        body: bytes = message.get("body", b"")
        if not message.get("more_body"):
            if len(body) > self.max_body:
                raise errors.BodyTooLarge(f"request body is over the {self.max_body}-byte limit", {"limit": self.max_body})
            return body
        chunks = [body]
        size = len(body)
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise errors.BodyTooLarge(f"request body is over the {self.max_body}-byte limit", {"limit": self.max_body})
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def _respond(self, send: Send, response: Response, version: str, route: str) -> None:
        body = response.body
        headers = [
            (b"content-length", str(len(body)).encode()),
            (b"x-grayroute-version", version.encode()),
            (b"x-grayroute-route", route.encode()),
        ]
        for pair in response.headers:
            if pair[0].lower() not in _RESPONSE_DROP:
                headers.append(pair)
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def _send(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [*headers, (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})


async def _send_error(
    send: Send, exc: errors.RouterError, version: str | None = None, route: str | None = None
) -> None:
    headers = list(_JSON)
    if version is not None and route is not None:
        headers += [(b"x-grayroute-version", version.encode()), (b"x-grayroute-route", route.encode())]
    await _send(send, exc.status, headers, _error_body(exc))
