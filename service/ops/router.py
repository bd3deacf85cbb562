"""Operations endpoints: ``/health`` (process up) and ``/ready`` (dependencies)."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import Engine

from service.config import Settings
from service.http.deps import AppSettings, DbEngine
from service.http.envelope import error, success
from service.http.responses import DATABASE, declared
from service.http.schemas import Envelope
from service.ops.checks import (
    CheckResult,
    ReadinessCache,
    check_broker,
    check_database,
    check_redis,
)

router = APIRouter(tags=["operations"])


class Health(BaseModel):
    status: str


class DependencyState(BaseModel):
    ok: bool
    required: bool
    detail: str


class Readiness(BaseModel):
    ready: bool
    database: DependencyState
    broker: DependencyState
    redis: DependencyState


@router.get("/health", response_model=Envelope[Health], responses=declared())
async def health() -> JSONResponse:
    """The process is up and serving."""
    return success({"status": "ok"})


@router.get("/ready", response_model=Envelope[Readiness], responses=declared(DATABASE))
def ready(request: Request, engine: DbEngine, settings: AppSettings) -> JSONResponse:
    """Database, broker and Redis each checked; 503 when a required one (the database) is down.

    The result is shared for a couple of seconds (``READY_CACHE_SECONDS``).
    """
    cache: ReadinessCache = request.app.state.readiness
    checks = cache.get(lambda: run_checks(engine, settings))
    if any(result.required and not result.ok for result in checks.values()):
        return error(503, "Not ready: " + summary(checks), {"Retry-After": "5"})
    return success({"ready": True, **{name: asdict(result) for name, result in checks.items()}})


def run_checks(engine: Engine, settings: Settings) -> dict[str, CheckResult]:
    """Each dependency checked once, now."""
    return {
        "database": check_database(engine),
        "broker": check_broker(settings.broker),
        "redis": check_redis(settings.redis),
    }


def summary(checks: dict[str, CheckResult]) -> str:
    """``database unreachable (OperationalError); broker ok; redis ok``."""
    return "; ".join(f"{name} {result.detail}" for name, result in checks.items())
