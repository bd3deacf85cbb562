"""Operations endpoints: ``/health`` (process up) and ``/ready`` (dependencies)."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from service.http.deps import AppSettings, DbEngine
from service.http.envelope import error, success
from service.http.responses import DATABASE, declared
from service.http.schemas import Envelope
from service.ops.checks import readiness

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
    report = readiness(request.app.state.readiness, engine, settings)
    if not report.ready:
        return error(503, "Not ready: " + report.summary(), {"Retry-After": "5"})
    checks = {name: asdict(result) for name, result in report.checks.items()}
    return success({"ready": True, **checks})
