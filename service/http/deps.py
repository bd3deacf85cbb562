"""``Annotated`` dependency aliases used by every router (names only; the checks live elsewhere).

- ``DbSession``: a Connection inside one transaction, committed when the route returns
  (before the answer is sent), rolled back on error. Services only execute.
- ``DbPool``: the asyncpg pool, for ``async def`` routes (the hot write paths).
- ``CurrentConsumer``: the tenant of ``X-API-Key`` (cached verification, no bcrypt warm).
- ``RateLimited``: ``CurrentConsumer`` after taking a token from its rate-limit bucket.
- ``AdminAccess``: ``X-Admin-Key`` checked in constant time; 403 when none is configured.
- ``Caller``: the operator (``X-Admin-Key``) or a rate-limited tenant (``X-API-Key``).
- ``Origin``: the route and request id, recorded on every event row.
- ``AuthCaches``: this instance's verified keys and the throttle's known-good keys, which
  issuing, rotating and revoking keys update.

Credentials fail closed (``service.auth.dependencies``); the app state, the request's
transaction and the event origin come from ``service.kit.request``.
"""

from __future__ import annotations

from typing import Annotated

import asyncpg
from fastapi import Depends, Query
from sqlalchemy import Connection, Engine

from service.auth.dependencies import (
    caller,
    key_caches,
    rate_limited_tenant,
    require_admin,
    tenant,
)
from service.auth.service import AuthenticatedConsumer, KeyCaches, Principal
from service.config import Settings
from service.kit.pagination import MAX_LIMIT
from service.kit.request import (
    EventOrigin,
    app_db_pool,
    app_engine,
    app_settings,
    db_connection,
    event_origin,
)

__all__ = [
    "AdminAccess",
    "AppSettings",
    "AuthCaches",
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

CurrentConsumer = Annotated[AuthenticatedConsumer, Depends(tenant)]
RateLimited = Annotated[AuthenticatedConsumer, Depends(rate_limited_tenant)]
AdminAccess = Annotated[Principal, Depends(require_admin)]
Caller = Annotated[Principal, Depends(caller)]
AuthCaches = Annotated[KeyCaches, Depends(key_caches)]
DbSession = Annotated[Connection, Depends(db_connection, scope="function")]
DbEngine = Annotated[Engine, Depends(app_engine)]
DbPool = Annotated[asyncpg.Pool, Depends(app_db_pool)]
AppSettings = Annotated[Settings, Depends(app_settings)]
Origin = Annotated[EventOrigin, Depends(event_origin)]
PageCursor = Annotated[
    str | None, Query(max_length=512, description="next_cursor of the previous page")
]
PageLimit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Page size")]
