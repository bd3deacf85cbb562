"""``Annotated`` dependency aliases used by every router.

- ``DbSession``: a Connection inside one transaction, committed when the route returns
  (before the answer is sent), rolled back on error. Services only execute.
- ``DbPool``: the asyncpg pool, for ``async def`` routes (the hot write paths).
- ``CurrentConsumer``: the tenant of ``X-API-Key`` (cached verification, no bcrypt warm).
- ``RateLimited``: ``CurrentConsumer`` after taking a token from its rate-limit bucket.
- ``AdminAccess``: ``X-Admin-Key`` checked in constant time; 403 when none is configured.
- ``Caller``: the operator (``X-Admin-Key``) or a rate-limited tenant (``X-API-Key``).
- ``Origin``: the route and request id, recorded on every event row.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

import asyncpg
from fastapi import Depends, Query, Request, Security
from fastapi.security import APIKeyHeader
from sqlalchemy import Connection, Engine
from starlette.concurrency import run_in_threadpool

from service.auth.keys import parse_key
from service.auth.service import (
    AuthenticatedConsumer,
    AuthState,
    Principal,
    record_last_use,
    verify_and_cache,
)
from service.config import Settings
from service.errors import Forbidden, Unauthorized
from service.events.schemas import EventOrigin
from service.metrics import route_template
from service.pagination import MAX_LIMIT
from service.ratelimit import enforce_rate_limit

__all__ = [
    "AdminAccess",
    "AppSettings",
    "AuthenticatedConsumer",
    "Caller",
    "CurrentConsumer",
    "DbEngine",
    "DbPool",
    "DbSession",
    "Origin",
    "PageCursor",
    "PageLimit",
    "Principal",
    "RateLimited",
]

ADMIN_DISABLED = "Admin API disabled: FINTEGRATE_ADMIN_API_KEY is not configured on this server"
ADMIN_REQUIRED = "This endpoint needs the operator key in X-Admin-Key; tenant keys are refused"
ADMIN_MISSING = "Missing X-Admin-Key header; send the operator key (FINTEGRATE_ADMIN_API_KEY)"
ADMIN_INVALID = "Invalid admin key in X-Admin-Key"
KEY_MISSING = "Missing X-API-Key header; send a tenant API key (fk_<prefix>_<secret>)"
KEY_MALFORMED = "Malformed API key in X-API-Key; expected fk_<prefix>_<secret>"

tenant_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="TenantKey")
admin_key_header = APIKeyHeader(name="X-Admin-Key", auto_error=False, scheme_name="AdminKey")


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


async def app_db_pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.db_pool
    return pool


def db_connection(request: Request) -> Iterator[Connection]:
    """One transaction per request: commit on success, rollback on error."""
    with engine_of(request).begin() as connection:
        yield connection


async def current_consumer(
    request: Request, api_key: Annotated[str | None, Security(tenant_key_header)]
) -> AuthenticatedConsumer:
    """The tenant of ``X-API-Key``: served from cache when warm, bcrypt only on a miss."""
    if api_key is None:
        raise Unauthorized(KEY_MISSING)
    key = parse_key(api_key)
    if key is None:
        raise Unauthorized(KEY_MALFORMED)
    auth: AuthState = request.app.state.auth
    engine = engine_of(request)
    consumer = auth.cache.get(key)
    if consumer is None:
        throttle = request.app.state.auth_throttle
        consumer = await run_in_threadpool(verify_and_cache, engine, key, throttle, auth)
    if auth.last_used.due(consumer.key_id):
        await run_in_threadpool(record_last_use, engine, consumer.key_id)
    request.state.actor = f"consumer:{consumer.name}"
    request.state.consumer_id = consumer.consumer_id
    return consumer


CurrentConsumer = Annotated[AuthenticatedConsumer, Depends(current_consumer)]


async def apply_rate_limit(request: Request, consumer: AuthenticatedConsumer) -> None:
    """Take one token from the tenant's bucket (its own limits, else the defaults)."""
    settings = settings_of(request)
    await enforce_rate_limit(
        request,
        bucket=f"consumer:{consumer.consumer_id}",
        per_minute=consumer.rate_limit_per_minute or settings.rate_limit_api_key_per_minute,
        burst=consumer.rate_limit_burst or settings.rate_limit_api_key_burst,
    )


async def rate_limited_consumer(
    request: Request, consumer: CurrentConsumer
) -> AuthenticatedConsumer:
    await apply_rate_limit(request, consumer)
    return consumer


RateLimited = Annotated[AuthenticatedConsumer, Depends(rate_limited_consumer)]


async def require_admin(
    request: Request,
    admin_key: Annotated[str | None, Security(admin_key_header)],
    api_key: Annotated[str | None, Security(tenant_key_header)],
) -> Principal:
    """The operator, or 401/403; every admin attempt is audited."""
    configured = settings_of(request).admin_api_key
    request.state.admin_action = True
    if not configured:
        raise Forbidden(ADMIN_DISABLED)
    if admin_key is None:
        raise Forbidden(ADMIN_REQUIRED) if api_key else Unauthorized(ADMIN_MISSING)
    if not hmac.compare_digest(admin_key.encode(), configured.encode()):
        raise Unauthorized(ADMIN_INVALID)
    request.state.actor = "admin"
    return Principal(is_admin=True)


AdminAccess = Annotated[Principal, Depends(require_admin)]


async def caller(
    request: Request,
    admin_key: Annotated[str | None, Security(admin_key_header)],
    api_key: Annotated[str | None, Security(tenant_key_header)],
) -> Principal:
    """The operator when ``X-Admin-Key`` is sent, else the rate-limited tenant."""
    if admin_key is not None:
        return await require_admin(request, admin_key, api_key)
    consumer = await current_consumer(request, api_key)
    await apply_rate_limit(request, consumer)
    return Principal(is_admin=False, consumer=consumer)


Caller = Annotated[Principal, Depends(caller)]
DbSession = Annotated[Connection, Depends(db_connection, scope="function")]
DbEngine = Annotated[Engine, Depends(app_engine)]
DbPool = Annotated[asyncpg.Pool, Depends(app_db_pool)]
AppSettings = Annotated[Settings, Depends(app_settings)]


async def event_origin(request: Request) -> EventOrigin:
    """``source_service`` (``"POST /customer/data"``) and request id for event rows."""
    return EventOrigin(
        source_service=f"{request.method} {route_template(request.scope)}",
        request_id=getattr(request.state, "request_id", None),
    )


Origin = Annotated[EventOrigin, Depends(event_origin)]

PageCursor = Annotated[
    str | None, Query(max_length=512, description="next_cursor of the previous page")
]
PageLimit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Page size")]
