"""Security headers for everything a browser may open: UI pages, their static files, the API docs.

Pages set their own (``UI_HEADERS``, with ``no-store``); this pure ASGI
middleware adds what a response lacks, so static files and ``/docs`` are
covered too. The docs pages load Swagger UI and ReDoc from the package's own
assets and start them with an inline script, so they get a policy that admits
exactly that, and still no framing, sniffing or foreign form targets.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UI_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
          "script-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
DOCS_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
            "script-src 'self' 'unsafe-inline'; worker-src 'self' blob:; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
BASE_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"}
UI_HEADERS = {"Content-Security-Policy": UI_CSP, **BASE_HEADERS, "Cache-Control": "no-store"}
DOCS_PATHS = ("/docs", "/redoc")


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        csp = DOCS_CSP if path.startswith(DOCS_PATHS) else UI_CSP

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in {"Content-Security-Policy": csp, **BASE_HEADERS}.items():
                    if name not in headers:
                        headers.append(name, value)
            await send(message)

        await self.app(scope, receive, with_headers)
