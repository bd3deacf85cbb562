"""The credential dependencies: tenant key, operator key, and the rate-limited caller.

Fail closed: every credential a request carries must verify, whatever else it carries
(a valid admin key beside a wrong ``X-API-Key`` is a 401). Refusals are counted and
sample-logged (``service.auth.refusals``), never audited. ``service.http.deps`` names them.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import APIKeyHeader
from starlette.concurrency import run_in_threadpool

from service.auth.keys import parse_key
from service.auth.refusals import RefusalRecorder
from service.auth.service import (
    UNKNOWN_ADDRESS,
    AuthenticatedConsumer,
    AuthState,
    KeyCaches,
    Principal,
    record_last_use,
    verify_and_cache,
)
from service.kit.errors import FintegrateError, Forbidden, TooManyRequests, Unauthorized
from service.kit.request import engine_of, settings_of
from service.ratelimit.limiter import auth_scope, enforce_rate_limit

ADMIN_DISABLED = "Admin API disabled: FINTEGRATE_ADMIN_API_KEY is not configured on this server"
ADMIN_REQUIRED = "This endpoint needs the operator key in X-Admin-Key; tenant keys are refused"
ADMIN_MISSING = "Missing X-Admin-Key header; send the operator key (FINTEGRATE_ADMIN_API_KEY)"
ADMIN_INVALID = "Invalid admin key in X-Admin-Key"
ADMIN_THROTTLED = "Too many invalid admin keys from your address; retry in a minute"
ADMIN_HEADER = "X-Admin-Key"
TENANT_HEADER = "X-API-Key"
ADMIN_SCOPE = "admin"
KEY_MISSING = "Missing X-API-Key header; send a tenant API key (fk_<prefix>_<secret>)"
KEY_MALFORMED = "Malformed API key in X-API-Key; expected fk_<prefix>_<secret>"

tenant_key_header = APIKeyHeader(name=TENANT_HEADER, auto_error=False, scheme_name="TenantKey")
admin_key_header = APIKeyHeader(name=ADMIN_HEADER, auto_error=False, scheme_name="AdminKey")


def client_address(request: Request) -> str:
    """The peer address the throttles budget by (the gateway's forwarded address behind it)."""
    return request.client.host if request.client else UNKNOWN_ADDRESS


def refused(request: Request, reason: str, exc: FintegrateError) -> FintegrateError:
    """Count and sample-log an authentication refusal; return ``exc`` to raise."""
    recorder: RefusalRecorder = request.app.state.auth_refusals
    recorder.record(reason, f"{request.method} {request.url.path}", client_address(request))
    return exc


def refusal_reason(exc: FintegrateError) -> str:
    return {401: "invalid_key", 403: "disabled_consumer", 429: "throttled"}.get(
        exc.status_code, "busy"
    )


async def tenant_of(request: Request, api_key: str) -> AuthenticatedConsumer:
    """The tenant of an ``X-API-Key`` value: from cache when warm, bcrypt (in a thread) if not."""
    key = parse_key(api_key)
    if key is None:
        raise refused(request, "malformed_key", Unauthorized(KEY_MALFORMED))
    auth: AuthState = request.app.state.auth
    consumer = auth.cache.get(key)  # warm: no engine, no thread
    if consumer is None:
        throttle = request.app.state.auth_throttle
        address = client_address(request)
        try:
            consumer = await verify_and_cache(engine_of(request), key, throttle, auth, address)
        except FintegrateError as exc:
            raise refused(request, refusal_reason(exc), exc) from None
    if auth.last_used.due(consumer.key_id):
        await run_in_threadpool(record_last_use, engine_of(request), consumer.key_id)
    return consumer


async def current_consumer(request: Request, api_key: str | None) -> AuthenticatedConsumer:
    """The tenant of ``X-API-Key``; an ``X-Admin-Key`` sent beside it must be valid too."""
    if api_key is None:
        raise refused(request, "missing_key", Unauthorized(KEY_MISSING))
    consumer = await tenant_of(request, api_key)
    extra_admin_key = request.headers.get(ADMIN_HEADER)
    if extra_admin_key is not None:
        await check_admin_key(request, extra_admin_key)
    request.state.actor = f"consumer:{consumer.name}"
    request.state.consumer_id = consumer.consumer_id
    return consumer


async def apply_rate_limit(request: Request, consumer: AuthenticatedConsumer) -> None:
    """Take one token from the tenant's bucket (its own limits, else the defaults)."""
    settings = settings_of(request)
    await enforce_rate_limit(
        request,
        bucket=f"consumer:{consumer.consumer_id}",
        per_minute=consumer.rate_limit_per_minute or settings.ratelimit.api_key_per_minute,
        burst=consumer.rate_limit_burst or settings.ratelimit.api_key_burst,
    )


class TenantKey(APIKeyHeader):
    """The ``X-API-Key`` security scheme that resolves the tenant itself (optionally after
    taking a rate-limit token).

    The header scheme and the tenant are one dependency, since FastAPI's solving of each
    dependency is paid on every request (docs/benchmarks.md). OpenAPI shows the
    ``TenantKey`` scheme on every route that uses it.
    """

    def __init__(self, *, rate_limited: bool) -> None:
        super().__init__(name=TENANT_HEADER, auto_error=False, scheme_name="TenantKey")
        self.rate_limited = rate_limited

    async def __call__(self, request: Request) -> AuthenticatedConsumer:  # type: ignore[override]
        consumer = await current_consumer(request, request.headers.get(TENANT_HEADER) or None)
        if self.rate_limited:
            await apply_rate_limit(request, consumer)
        return consumer


tenant = TenantKey(rate_limited=False)
rate_limited_tenant = TenantKey(rate_limited=True)


async def check_admin_key(request: Request, admin_key: str) -> None:
    """Compare ``admin_key`` in constant time first: the right key always passes.

    Wrong keys count per client address; past its failure budget an address gets 429 for
    every wrong key. With at least 32 characters outside development (settings), guessing
    within that budget is hopeless, so strangers cannot lock the operator out.
    """
    configured = settings_of(request).auth.admin_api_key
    if not configured:
        raise refused(request, "admin_disabled", Forbidden(ADMIN_DISABLED))
    if hmac.compare_digest(admin_key.encode(), configured.encode()):
        return
    throttle = request.app.state.auth_throttle
    scope = auth_scope(ADMIN_SCOPE, client_address(request))
    if await run_in_threadpool(throttle.is_blocked, scope):
        raise refused(
            request, "admin_throttled", TooManyRequests(ADMIN_THROTTLED, {"Retry-After": "60"})
        )
    await run_in_threadpool(throttle.record_failure, scope)
    raise refused(request, "admin_invalid", Unauthorized(ADMIN_INVALID))


async def require_admin(
    request: Request,
    admin_key: Annotated[str | None, Security(admin_key_header)],
    api_key: Annotated[str | None, Security(tenant_key_header)],
) -> Principal:
    """The operator, or 401/403 (429 when throttled).

    Fails closed: an ``X-API-Key`` sent beside the admin key must verify too. Only a
    verified operator's actions are audited; refusals write nothing.
    """
    if not settings_of(request).auth.admin_api_key:
        raise refused(request, "admin_disabled", Forbidden(ADMIN_DISABLED))
    if admin_key is None:
        if api_key is None:
            raise refused(request, "admin_missing", Unauthorized(ADMIN_MISSING))
        await tenant_of(request, api_key)
        raise refused(request, "tenant_key_on_admin", Forbidden(ADMIN_REQUIRED))
    await check_admin_key(request, admin_key)
    if api_key is not None:
        await tenant_of(request, api_key)
    request.state.actor = "admin"
    request.state.admin_action = True
    return Principal(is_admin=True)


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


async def key_caches(request: Request) -> KeyCaches:
    """This instance's verification cache and failed-auth throttle (the app's state)."""
    return KeyCaches(request.app.state.auth, request.app.state.auth_throttle)
