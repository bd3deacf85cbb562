"""What a request reaches through the app: settings, engine, pool, its transaction, origin.

The ``*_of`` functions read them off a ``Request``; the ``async`` ones are the same as
dependencies (``service.http.deps``). The two hot routes call the ``*_of`` functions
instead of dependencies, which FastAPI solves at a cost per request (docs/benchmarks.md).
At the bottom of the layers (docs/ARCHITECTURE.md) so that auth, rate limiting, the edge
and the domains all read request state the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
from fastapi import Request
from sqlalchemy import Connection, Engine
from starlette.types import Scope

from service.config import Settings

UNMATCHED_ROUTE = "unmatched"
RESPONSE_STATUS = "response_status"  # state key: the status of the answer, once it started


@dataclass(frozen=True)
class EventOrigin:
    """Where a change came from: ``source_service`` and the request id for ``metadata_json``."""

    source_service: str
    request_id: str | None = None
    traceparent: str | None = None  # the request span's, when tracing is on


def state_of(scope: Scope) -> dict[str, Any]:
    """The per-request state dict (the one behind ``request.state``)."""
    state: dict[str, Any] = scope.setdefault("state", {})
    return state


def route_template(scope: Scope) -> str:
    """The matched route's path template (``/customer/data/{customer_id}``), never the raw path."""
    route = scope.get("route")
    path = getattr(route, "path_format", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def engine_of(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def app_settings(request: Request) -> Settings:
    return settings_of(request)


async def app_engine(request: Request) -> Engine:
    return engine_of(request)


def db_pool_of(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.db_pool
    return pool


async def app_db_pool(request: Request) -> asyncpg.Pool:
    return db_pool_of(request)


def db_connection(request: Request) -> Iterator[Connection]:
    """One transaction per request: commit on success, rollback on error."""
    with engine_of(request).begin() as connection:
        yield connection


def origin_of(request: Request) -> EventOrigin:
    """``source_service`` (``"POST /customer/data"``) and request id for event rows."""
    return EventOrigin(
        source_service=f"{request.method} {route_template(request.scope)}",
        request_id=getattr(request.state, "request_id", None),
        traceparent=request.scope.get("state", {}).get("traceparent"),
    )


async def event_origin(request: Request) -> EventOrigin:
    return origin_of(request)
