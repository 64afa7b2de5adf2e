"""Admission before any body is read: a size limit on every request, and the bearer token on API writes.

FastAPI reads and parses a body before it resolves the dependency that checks
the token, so without this a caller with no token could make the control plane
read and parse any amount of data before answering 401. This pure ASGI
middleware (nothing buffers the body ahead of it) answers 413 from the declared
``Content-Length`` at once, or as soon as a chunked body streams past the
limit, and authenticates API requests that carry a body before the route reads
a byte. The actor it found is handed to ``deps.current_actor`` so the token is
looked up once. (Starlette's own body limit acts only when a route reads the
body, so it cannot put the token first, and it answers in plain text rather
than in the API's error shape.)
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from control_plane.auth import service as auth_service
from control_plane.deps import ADMITTED_ACTOR
from control_plane.errors import Unauthenticated, error_body


async def _answer(send: Send, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


class Admission:
    """Size limit and authentication-before-body for one FastAPI app."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.sessions = sessions

    def _too_large(self) -> dict[str, Any]:
        return error_body("too_large", f"request body is larger than {self.max_body_bytes} bytes "
                                       "(GRAYROUTE_MAX_REQUEST_BYTES)", {"limit_bytes": self.max_body_bytes})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        # The server refuses a Content-Length that is not a number before we are called.
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            # Connection: close, so the server does not read the rest only to throw it away.
            await _answer(send, 413, self._too_large(), {"connection": "close"})
            return
        has_body = chunked or (declared is not None and declared != "0")
        if has_body and scope["path"].startswith("/api/"):
            actor = await self._authenticate(headers)
            if actor is None:
                await _answer(send, 401, error_body("unauthenticated", "missing, unknown or revoked bearer token "
                                                                       "(Authorization: Bearer <token>)"),
                              {"www-authenticate": "Bearer", "connection": "close"})
                return
            scope.setdefault("state", {})[ADMITTED_ACTOR] = actor
        if not chunked:
            await self.app(scope, receive, send)  # the server delivers exactly Content-Length bytes
            return
        await self._streamed(scope, receive, send)

    async def _authenticate(self, headers: Headers) -> auth_service.Actor | None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        async with self.sessions() as session:
            try:
                return await auth_service.authenticate(session, token=token.strip())
            except Unauthenticated:
                return None

    async def _streamed(self, scope: Scope, receive: Receive, send: Send) -> None:
        received = 0
        refused = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    refused = True
                    if not started:
                        await _answer(send, 413, self._too_large(), {"connection": "close"})
                    # To the route the client is gone: it stops reading, and its answer is dropped below.
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, limited_receive, guarded_send)
