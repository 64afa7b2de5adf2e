"""Control-plane errors and their one mapping to HTTP answers.

::

    GrayrouteError
     ├── InvalidInput          422  a value breaks a rule; details name the fields
     │    └── MalformedRequest 400  the body is not JSON at all
     ├── Unauthenticated       401  no token, or an unknown one
     ├── Forbidden             403  the role may not do this
     ├── NotFound              404
     ├── Conflict              409  the request clashes with current state
     ├── PreconditionFailed    412  If-Match names a stale revision
     └── PreconditionRequired  428  a guarded write without If-Match

Services raise these; only ``install_handlers`` knows status codes. Foreign
errors (pydantic, SQLAlchemy, asyncpg, OS) are mapped at this boundary; an
unreachable database becomes 503 ``unavailable`` there.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DataError, DBAPIError, TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

log = logging.getLogger(__name__)


class GrayrouteError(Exception):
    status_code = 500
    code = "internal"

    def __init__(self, message: str, details: Any = None, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers


class InvalidInput(GrayrouteError):
    status_code, code = 422, "invalid"

    @classmethod
    def field(cls, field: str, reason: str) -> InvalidInput:
        return cls(f"{field}: {reason}", [{"field": field, "reason": reason}])


class MalformedRequest(InvalidInput):
    status_code, code = 400, "malformed"


class Unauthenticated(GrayrouteError):
    status_code, code = 401, "unauthenticated"


class Forbidden(GrayrouteError):
    status_code, code = 403, "forbidden"


class NotFound(GrayrouteError):
    status_code, code = 404, "not_found"


class Conflict(GrayrouteError):
    status_code, code = 409, "conflict"


class PreconditionFailed(GrayrouteError):
    status_code, code = 412, "stale"


class PreconditionRequired(GrayrouteError):
    status_code, code = 428, "if_match_required"


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


class ErrorInfo(BaseModel):
    code: str
    message: str
    details: Any  # 400 and 422: [{"field", "reason"}, ...]; otherwise what the code needs, or null


class ErrorBody(BaseModel):
    """The shape of every error answer."""

    error: ErrorInfo


_MEANINGS = {400: "the body is not JSON", 401: "no token, or an unknown one", 403: "the role may not do this",
             404: "not found", 409: "the request clashes with current state", 412: "If-Match names a stale revision",
             422: "a value breaks a rule; details name the fields", 428: "If-Match missing",
             503: "the database is unreachable; retry"}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for error answers (replacing FastAPI's default 422 shape, which we never send)."""
    return {status: {"model": ErrorBody, "description": _MEANINGS[status]} for status in statuses}


ERROR_RESPONSES = error_responses(400, 401, 403, 404, 422, 503)  # what any API route may answer


# Plain-language meanings of the regular expressions the schemas use (registered by them), so a
# refusal says "lowercase letters, digits and '-'" rather than quoting the expression.
_PATTERN_REASONS: dict[str, str] = {}

# A union member's tag starts with this; it names a schema variant, not a field the user sent.
UNION_TAG_PREFIX = "~"


def explain_pattern(pattern: str, reason: str) -> str:
    """Register the plain meaning of ``pattern`` for refusals; returns the pattern."""
    _PATTERN_REASONS[pattern] = reason
    return pattern


def _field_path(loc: tuple[Any, ...]) -> str:
    # Only the first element says where the value was (body, query…); a field may itself be named "header".
    inner = loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc
    parts = [p for p in inner if not (isinstance(p, str) and p.startswith(UNION_TAG_PREFIX))]
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or ".".join(str(p) for p in loc)


def _reason(error: dict[str, Any]) -> str:
    """pydantic's message, in the words of someone filling in the field."""
    kind, ctx = error.get("type"), error.get("ctx") or {}
    if kind == "string_pattern_mismatch":
        return _PATTERN_REASONS.get(str(ctx.get("pattern")), "contains characters that are not allowed here")
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return "not a field of this object"
    if kind == "too_short" and ctx.get("min_length") == 1:
        return "must not be empty"
    message = str(error.get("msg", "invalid"))
    return message.removeprefix("Value error, ")


def validation_details(errors: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"field": _field_path(tuple(e.get("loc", ()))), "reason": _reason(e)} for e in errors]


# SQLSTATEs that mean "the server went away or will not talk now", not "your query is wrong":
# class 08 (connection exception), admin/crash shutdown, cannot connect now, too many connections.
_UNREACHABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300")
_UNREACHABLE_DRIVER_ERRORS = {
    "CannotConnectNowError", "ConnectionDoesNotExistError", "InterfaceError", "ConnectionFailureError",
    "AdminShutdownError", "CrashShutdownError", "ConnectionRejectionError", "TooManyConnectionsError",
    "InternalClientError",
}


def is_database_unreachable(exc: BaseException) -> bool:
    """True for any failure that an outage explains (walks the cause chain the drivers build)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, PoolTimeoutError | OSError | TimeoutError):
            return True
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        orig = current.orig if isinstance(current, DBAPIError) else current
        sqlstate = str(getattr(orig, "sqlstate", None) or "")
        if sqlstate.startswith(_UNREACHABLE_SQLSTATES) or type(orig).__name__ in _UNREACHABLE_DRIVER_ERRORS:
            return True
        if isinstance(current, DBAPIError) and orig is not current and orig is not None:
            current = orig
            continue
        current = current.__cause__ or current.__context__
    return False


def is_unstorable_value(exc: BaseException) -> bool:
    """The database refused a value itself (NUL in text, an integer out of range): the caller's input, not an outage."""
    if isinstance(exc, DataError):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    # SQLSTATE class 22 is "data exception"; asyncpg's own argument checks raise a DataError without one.
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    return sqlstate.startswith("22") or type(getattr(exc.orig, "__cause__", None)).__name__ == "DataError"


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(GrayrouteError)
    async def _grayroute(_request: Request, exc: GrayrouteError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message, exc.details), exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return JSONResponse(error_body("malformed", "request body is not valid JSON",
                                           validation_details(errors)), 400)
        details = validation_details(errors)
        message = "; ".join(f"{d['field']}: {d['reason']}" for d in details)
        return JSONResponse(error_body("invalid", message, details), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {400: "malformed", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            # Starlette's Allow names only the first route of the path; GET and POST /models are two routes.
            allowed = [m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
                       if any(route.matches({**request.scope, "method": m})[0] == Match.FULL
                              for route in request.app.router.routes)]
            headers = {**(headers or {}), "Allow": ", ".join(allowed)}
        return JSONResponse(error_body(code, str(exc.detail)), exc.status_code, headers=headers)

    @app.exception_handler(DBAPIError)
    async def _database(_request: Request, exc: DBAPIError) -> JSONResponse:
        if not is_unstorable_value(exc):
            raise exc  # outages and bugs: the handler below
        # A safety net: schemas should already refuse such values and name the field.
        log.warning("database refused a value: %s", exc)
        return JSONResponse(error_body("invalid", "a value cannot be stored (out of range, or a NUL character)"), 422)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        if is_database_unreachable(exc):
            log.warning("database unreachable: %s", exc)
            return JSONResponse(error_body("unavailable", "the database is unreachable; retry shortly"), 503,
                                headers={"Retry-After": "1"})
        log.exception("unhandled error")
        return JSONResponse(error_body("internal", "internal error"), 500)
