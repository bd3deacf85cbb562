"""Exception handlers: every error, from services, framework or database, as an envelope."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from service.http.envelope import error
from service.kit.db_async import DatabaseUnavailable, is_database_outage
from service.kit.errors import FintegrateError
from service.kit.log_safety import describe, is_database_error, safe_traceback

logger = logging.getLogger(__name__)

DATABASE_UNAVAILABLE = "Database unavailable; retry shortly (the failure was logged)"
INTERNAL_ERROR = "Internal server error; the failure was logged with request id {request_id}"
MAX_VALIDATION_ERRORS = 5
FASTAPI_BODY_ERROR = "There was an error parsing the body"
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def request_id_headers(request: Request) -> dict[str, str]:
    """The X-Request-ID header for answers built outside the request-id middleware."""
    request_id = getattr(request.state, "request_id", None)
    return {"X-Request-ID": request_id} if request_id else {}


async def fintegrate_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FintegrateError)
    return error(exc.status_code, exc.description, exc.headers)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error(422, describe_validation_errors(exc.errors()))


def describe_validation_errors(errors: Any) -> str:
    """One readable line naming each failing field: ``body.name: String should ...``."""
    parts = []
    for item in list(errors)[:MAX_VALIDATION_ERRORS]:
        if item.get("type") == "json_invalid":
            parts.append(f"malformed JSON body ({item.get('ctx', {}).get('error', 'invalid')})")
            continue
        location = ".".join(str(part) for part in item.get("loc", ()))
        parts.append(f"{location}: {item.get('msg', 'invalid value')}")
    more = len(list(errors)) - MAX_VALIDATION_ERRORS
    suffix = f" (and {more} more)" if more > 0 else ""
    return "Invalid request: " + "; ".join(parts) + suffix


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request))
    return error(exc.status_code, describe_http_error(request, exc, headers), headers)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves on this path (Starlette names only the first route's)."""
    return [
        method
        for method in HTTP_METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in request.app.router.routes
        )
    ]


def describe_http_error(
    request: Request, exc: StarletteHTTPException, headers: dict[str, str]
) -> str:
    """A specific message for framework errors (unknown route, wrong method, bad body)."""
    target = f"{request.method} {request.url.path}"
    if exc.status_code == 404 and exc.detail == "Not Found":
        return f"No route matches {target}; see /docs for the API"
    if exc.status_code == 405:
        allowed = headers.get("Allow", "")
        return f"Method {request.method} is not allowed on {request.url.path}; allowed: {allowed}"
    if exc.status_code == 400 and exc.detail == FASTAPI_BODY_ERROR:
        return "Malformed request body: send UTF-8 encoded JSON"
    return str(exc.detail)


def is_outage(exc: Exception) -> bool:
    """A database outage on either path (SQLAlchemy/psycopg2 or asyncpg), not a bug."""
    if isinstance(exc, OperationalError | PoolTimeoutError | DatabaseUnavailable):
        return True
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or (exc.orig is not None and is_database_outage(exc.orig))
    return is_database_outage(exc)


async def database_error(request: Request, exc: Exception) -> JSONResponse:
    """Lost or unreachable database: 503, never a traceback to the client."""
    if not is_outage(exc):
        return await unhandled_error(request, exc)
    logger.warning(
        "database unavailable on %s %s: %s", request.method, request.url.path, describe(exc)
    )
    request.state.database_unavailable = True
    request.state.audit_detail = {"error": type(exc).__name__}
    return error(503, DATABASE_UNAVAILABLE, {"Retry-After": "1"})


async def unhandled_error(request: Request, exc: Exception) -> JSONResponse:
    """Anything unexpected: 500 with the request id; the traceback goes to the log only."""
    request_id = getattr(request.state, "request_id", "unknown")
    where = (request.method, request.url.path, request_id)
    if is_database_error(exc):  # its message may quote row contents: never logged
        logger.error("unhandled error on %s %s (request id %s)\n%s", *where, safe_traceback(exc))
    else:
        logger.error("unhandled error on %s %s (request id %s)", *where, exc_info=exc)
    description = INTERNAL_ERROR.format(request_id=request_id)
    return error(500, description, request_id_headers(request))


def install_exception_handlers(app: FastAPI) -> None:
    """Register every handler on ``app``."""
    app.add_exception_handler(FintegrateError, fintegrate_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(OperationalError, database_error)
    app.add_exception_handler(PoolTimeoutError, database_error)
    app.add_exception_handler(DBAPIError, database_error)
    app.add_exception_handler(DatabaseUnavailable, database_error)
    app.add_exception_handler(asyncpg.PostgresError, database_error)
    app.add_exception_handler(asyncpg.InterfaceError, database_error)
    app.add_exception_handler(Exception, unhandled_error)
