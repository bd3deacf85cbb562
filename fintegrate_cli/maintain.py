"""fintegrate maintain: history maintenance in the foreground (one process at a time)."""

from __future__ import annotations

import threading
from typing import Annotated

import typer

from fintegrate_cli._context import state
from fintegrate_cli._errors import EXIT_USAGE, CliError
from fintegrate_cli._output import info, print_json, wants_json
from fintegrate_cli.workers import configure_logging
from service.events.maintenance import MaintainBusy, run_maintain
from service.messaging.shutdown import install_stop_handlers
from service.ops.metrics_server import start_metrics_server


def maintain(
    ctx: typer.Context,
    once: Annotated[
        bool, typer.Option("--once", help="Run every job once, then exit (1 if a job failed).")
    ] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port", min=1, max=65535, help="Serve Prometheus text on this port."
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option("--metrics-host", help="Address of the metrics port.")
    ] = "127.0.0.1",
) -> None:
    """Keep the event history bounded until SIGTERM/SIGINT: partitions ahead, DEFAULT rows
    moved out, never-confirmed events expired, counts folded, the optional retention.

    One at a time: a second `fintegrate maintain` says who runs and exits 1.
    """
    cli = state(ctx)
    settings = cli.settings()
    configure_logging(cli.quiet, cli.debug)
    if metrics_port is not None:
        try:
            start_metrics_server(metrics_port, metrics_host)
        except OSError as exc:
            raise CliError(
                f"cannot serve metrics on {metrics_host}:{metrics_port} ({exc.strerror}); "
                "choose another --metrics-port",
                EXIT_USAGE,
            ) from exc
    stop = threading.Event()
    restore = install_stop_handlers(stop)
    try:
        report = run_maintain(settings, stop, once=once)
    except MaintainBusy as exc:
        raise CliError(f"{exc}; one maintain at a time, this one exits") from exc
    finally:
        restore()
    if once and report is not None:
        if wants_json(ctx, False):
            print_json(report.__dict__)
        if report.errors:
            first = next(iter(report.errors.items()))
            raise CliError(f"maintenance job {first[0]} failed: {first[1]}")
        if report.skipped:
            raise CliError(f"maintenance pass skipped: {report.skipped}")
    info("maintain stopped", cli.quiet)


def register(app: typer.Typer) -> None:
    """Attach this module's command to the root app."""
    app.command("maintain")(maintain)
