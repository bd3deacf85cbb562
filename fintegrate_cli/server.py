"""fintegrate serve: run the customer service API with uvicorn."""

from __future__ import annotations

import os
from typing import Annotated

import typer
import uvicorn

from fintegrate_cli._context import state
from fintegrate_cli._output import info

APP_FACTORY = "service.app:create_app"
# uvicorn kills a worker that misses one 5 s health ping (and one not ready 5 s after it
# was spawned): on a CPU-starved machine that is a live worker, and its restart (imports,
# pools) starves the others further (docs/benchmarks.md, 2026-12-07 busy-machine runs).
WORKER_HEALTHCHECK_SECONDS = 30
# An idle kept-alive connection stays open longer than the gateway keeps it idle
# (service.gateway.config.UPSTREAM_IDLE_SECONDS), so the gateway, not uvicorn, closes it,
# and never sends a request down a connection uvicorn is closing (uvicorn's default is 5 s).
KEEP_ALIVE_SECONDS = 75


def serve(
    ctx: typer.Context,
    host: Annotated[
        str, typer.Option("--host", help="Interface to bind (loopback by default).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")] = 8000,
    workers: Annotated[
        int, typer.Option("--workers", min=1, help="Worker processes (each with its own pool).")
    ] = 1,
    reload: Annotated[
        bool, typer.Option("--reload", help="Restart on code changes (development only).")
    ] = False,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
) -> None:
    """Serve the REST API (service.app:create_app) until interrupted."""
    cli = state(ctx)
    settings = cli.settings()
    os.environ.update(settings.environment_variables())
    info(f"serving the API on http://{host}:{port} with {workers} worker(s)", cli.quiet)
    uvicorn.run(
        APP_FACTORY,
        factory=True,
        host=host,
        port=port,
        workers=None if reload else workers,
        reload=reload,
        log_level=log_level,
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        # X-Forwarded-For is believed only from the gateway's addresses (none by default).
        proxy_headers=bool(settings.http.trusted_proxy_ips),
        forwarded_allow_ips=settings.http.trusted_proxy_ips or None,
    )


def register(app: typer.Typer) -> None:
    """Attach this module's commands to the root app."""
    app.command("serve")(serve)
