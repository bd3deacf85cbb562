"""The customer service application: ``create_app()`` wires routers, middleware and state."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from fastapi.telemetry import TelemetryConfig

from service.auth.cache import VerificationCache
from service.auth.refusals import RefusalRecorder
from service.auth.service import AuthState, BcryptGate
from service.config import Settings, get_settings
from service.consumers.router import me_router as consumer_me_router
from service.consumers.router import router as consumers_router
from service.customers.router import router as customers_router
from service.delivery.router import router as delivery_router
from service.events.router import router as events_router
from service.http.handlers import install_exception_handlers
from service.http.metrics import HttpMetrics
from service.http.metrics import router as metrics_router
from service.http.middleware import EdgeMiddleware
from service.http.tracing import TracingMiddleware
from service.kit import tracing
from service.kit.db import bound_database_waits, create_db_engine
from service.kit.db_async import close_pool, create_pool
from service.kit.heap import freeze_startup_objects
from service.ops.checks import ReadinessCache
from service.ops.platform_metrics import OutboxGauges, register_event_metrics
from service.ops.router import router as ops_router
from service.ratelimit.limiter import FailedAuthThrottle, RateLimiter
from service.webhooks.router import router as webhooks_router

# Matching order. FastAPI (0.16x) tries the included routers in this order and walks every
# route of a router that does not match (its cost: docs/benchmarks.md). The two hot paths
# come first: POST /events/confirm-delivery and /confirm-deliveries (the
# delivery router, 4 routes), then POST /customer/data; the other routes pay about that
# much more, on far rarer requests. No two routers serve one path, so the order decides
# nothing else; the docs keep TAGS' order.
ROUTERS: list[APIRouter] = [
    delivery_router,
    customers_router,
    ops_router,
    metrics_router,
    consumers_router,
    consumer_me_router,
    events_router,
    webhooks_router,
]
# FastAPI's native OpenTelemetry, unless FINTEGRATE_OPENTELEMETRY is set (.env.example).
NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}
TAGS = [
    {"name": "operations", "description": "Health, readiness and Prometheus metrics"},
    {"name": "consumers", "description": "Tenants and their API keys (operator)"},
    {"name": "customers", "description": "A tenant's customers, tags and analytics"},
    {"name": "events", "description": "A tenant's customer events"},
    {"name": "delivery", "description": "Delivery receipts, resend and redelivery"},
    {"name": "webhooks", "description": "A tenant's webhook endpoints, attempts and recovery"},
]


def operation_id(route: APIRoute) -> str:
    """Stable OpenAPI operation ids: the endpoint function's name."""
    return route.name


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open the engine, the asyncio pool, rate limiter and auth throttle; close them after."""
    settings: Settings = app.state.settings
    registry = app.state.metrics.registry
    bound_database_waits(settings.database)
    app.state.engine = create_db_engine(settings.database)
    app.state.db_pool = await create_pool(settings.database)
    app.state.rate_limiter = RateLimiter(settings.redis, registry=registry)
    app.state.auth_throttle = FailedAuthThrottle(settings.redis, settings.auth, registry=registry)
    freeze_startup_objects()
    try:
        yield
    finally:
        app.state.auth_throttle.close()
        await app.state.rate_limiter.close()
        await close_pool(app.state.db_pool)
        app.state.engine.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new application for ``settings`` (default: the process settings)."""
    settings = settings or get_settings()
    tracing.configure("fintegrate-api")
    app = FastAPI(
        title="Fintegrate customer service",
        version="0.1.0",
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
        openapi_tags=TAGS,
        telemetry=None if settings.observability.opentelemetry else NO_TELEMETRY,
    )
    app.state.settings = settings
    app.state.metrics = HttpMetrics()
    register_event_metrics(app.state.metrics.registry)
    app.state.metrics.registry.register(OutboxGauges(lambda: getattr(app.state, "engine", None)))
    app.state.auth = AuthState(
        VerificationCache(app.state.settings.auth.cache_ttl_seconds),
        BcryptGate(app.state.settings.auth.bcrypt_concurrency),
    )
    app.state.auth_refusals = RefusalRecorder(app.state.metrics.registry)
    app.state.readiness = ReadinessCache()
    for router in ROUTERS:
        app.include_router(router)
    install_exception_handlers(app)
    install_middleware(app)
    return app


def install_middleware(app: FastAPI) -> None:
    """The edge (request id, rate-limit headers, audit, metrics, body limit): one layer."""
    settings = app.state.settings
    app.add_middleware(
        EdgeMiddleware, metrics=app.state.metrics, max_body_bytes=settings.http.max_body_bytes
    )
    if tracing.ENABLED:  # decided once at start-up: off, requests pay nothing for tracing
        app.add_middleware(TracingMiddleware)
