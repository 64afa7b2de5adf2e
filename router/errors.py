"""The router's exception tree; ``router.app`` turns each into one JSON answer.

The body keeps the KServe v2 / Open Inference Protocol shape that clients
such as tritonclient parse, ``{"error": "<message>"}``, with the machine-readable
``code`` and ``details`` beside it as extra fields.

Exceptions::

    RouterError                 status, code: the HTTP answer a client gets
     ├── UnknownModel           404 model not in the snapshot
     ├── NoSuchVersion          404 explicit version the model does not have
     ├── UnknownVersion         404 explicit version without ready backends
     ├── NotFound               404 a path the router does not serve
     ├── MethodNotAllowed       405
     ├── BodyTooLarge           413 request body over the configured limit
     ├── BodyIncomplete         408 a body forwarded as it arrived stopped short (too slow, or the client left)
     ├── NotReady               503 no valid snapshot yet
     ├── NoBackend              503 neither the chosen nor the default version has a backend
     ├── Overloaded             503 the backend's queue for a free connection is full or its wait ran out
     └── UpstreamError          502 the backend broke the exchange
          ├── ConnectError      503 nothing was sent: safe to retry elsewhere
          │    ├── ConnectRefused   nothing listens there (a dead process): the backend is down
          │    └── ConnectTimeout   no handshake in time (a full accept queue): the backend is overloaded
          ├── StaleConnection   a reused keep-alive connection closed before any response byte
          └── UpstreamTimeout   504 the backend did not answer in time

The 503s carry ``Retry-After`` (``retry_after``): nothing reached a backend, so
the client may safely send the request again.
"""

from __future__ import annotations

from typing import Any


class RouterError(Exception):
    status = 500
    code = "internal"
    retry_after: int | None = None  # seconds, for the Retry-After header

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class UnknownModel(RouterError):
    status = 404
    code = "model_not_found"


class NoSuchVersion(RouterError):
    status = 404
    code = "version_not_found"


class UnknownVersion(RouterError):
    status = 404
    code = "version_not_ready"


class NotFound(RouterError):
    status = 404
    code = "not_found"


class MethodNotAllowed(RouterError):
    status = 405
    code = "method_not_allowed"


class BodyTooLarge(RouterError):
    status = 413
    code = "body_too_large"


class BodyIncomplete(RouterError):
    status = 408
    code = "request_timeout"


class NotReady(RouterError):
    status = 503
    code = "not_ready"
    retry_after = 1


class NoBackend(RouterError):
    status = 503
    code = "no_ready_backend"
    retry_after = 1


class Overloaded(RouterError):
    status = 503
    code = "overloaded"
    retry_after = 1

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # the ``reason`` label of the shed metric: queue_full | queue_timeout


class UpstreamError(RouterError):
    status = 502
    code = "upstream_error"
    kind = "protocol"  # the ``kind`` label of the upstream-errors metric


class ConnectError(UpstreamError):
    status = 503
    code = "backend_unavailable"
    kind = "connect"
    retry_after = 1


class ConnectRefused(ConnectError):
    pass


class ConnectTimeout(ConnectError):
    kind = "connect_timeout"


class StaleConnection(UpstreamError):
    kind = "stale"


class BackendClosed(UpstreamError):
    """A new connection closed before any byte of the answer: the backend died (or restarted) with the request."""

    kind = "closed"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
    kind = "timeout"
