"""fintegrate gateway: Traefik in front of the API instances, in the foreground."""

from __future__ import annotations

import threading
from typing import Annotated

import typer

from fintegrate_cli._context import state
from fintegrate_cli._errors import CliError
from fintegrate_cli._output import info
from service.gateway.runner import Gateway, GatewayError, GatewayOptions
from service.messaging.shutdown import install_stop_handlers


def gateway(
    ctx: typer.Context,
    port: Annotated[
        int | None,
        typer.Option(
            "--port", min=1, max=65535, help="Public entry point (FINTEGRATE_GATEWAY_PORT)."
        ),
    ] = None,
    upstream: Annotated[
        list[str] | None,
        typer.Option(
            "--upstream",
            help="An API instance's base URL; repeat for each (FINTEGRATE_GATEWAY_UPSTREAMS).",
        ),
    ] = None,
    internal_port: Annotated[
        int | None,
        typer.Option(
            "--internal-port",
            min=1,
            max=65535,
            help="Entry point without the IP limit, every path (FINTEGRATE_GATEWAY_INTERNAL_PORT).",
        ),
    ] = None,
    dashboard_port: Annotated[
        int | None,
        typer.Option(
            "--dashboard-port",
            min=1,
            max=65535,
            help="Traefik dashboard on 127.0.0.1 (FINTEGRATE_GATEWAY_DASHBOARD_PORT).",
        ),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option("--host", help="Interface of the entry points (FINTEGRATE_GATEWAY_HOST)."),
    ] = None,
) -> None:
    """Run Traefik in front of the API instances until SIGTERM/SIGINT (docs/gateway.md).

    One IP budget per client across every route, health-checked load balancing, reads
    retried on another instance, and every answer of the gateway itself in the envelope.
    """
    cli = state(ctx)
    settings = cli.settings()
    options = chosen_options(
        GatewayOptions.from_settings(settings.gateway),
        port,
        upstream,
        internal_port,
        dashboard_port,
        host,
    )
    stop = threading.Event()
    restore = install_stop_handlers(stop)
    runner = Gateway(settings.gateway, options)
    try:
        runner.start()
        info(describe(runner), cli.quiet)
        code = runner.run_until(stop)
    except GatewayError as exc:
        raise CliError(f"gateway: {exc}") from exc
    finally:
        runner.stop()
        restore()
    if code != 0:
        raise CliError(f"gateway: traefik exited with code {code} (see its log above)")
    info("gateway stopped", cli.quiet)


def chosen_options(
    base: GatewayOptions,
    port: int | None,
    upstream: list[str] | None,
    internal_port: int | None,
    dashboard_port: int | None,
    host: str | None,
) -> GatewayOptions:
    """Settings-derived options with the command line's choices on top."""
    return GatewayOptions(
        host=host or base.host,
        port=port or base.port,
        upstreams=tuple(upstream) if upstream else base.upstreams,
        internal_port=internal_port or base.internal_port,
        dashboard_port=dashboard_port or base.dashboard_port,
    )


def describe(runner: Gateway) -> str:
    options = runner.options
    extras = []
    if options.internal_port:
        extras.append(f"internal :{options.internal_port}")
    if options.dashboard_port:
        extras.append(f"dashboard http://127.0.0.1:{options.dashboard_port}/dashboard/")
    suffix = f" ({', '.join(extras)})" if extras else ""
    return f"gateway on {runner.url} -> {', '.join(options.upstreams)}{suffix}"


def register(app: typer.Typer) -> None:
    """Attach this module's commands to the root app."""
    app.command("gateway")(gateway)
