"""The root ``fintegrate`` command: global options and one sub-app per group."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fintegrate_cli import (
    bench,
    config_cmd,
    consumer,
    customers,
    events,
    keys,
    migrate,
    queues,
    runtime,
    webhooks,
)
from fintegrate_cli._context import CliState
from fintegrate_cli._failures import ReportingGroup

app = typer.Typer(
    name="fintegrate",
    cls=ReportingGroup,
    help="Operate Fintegrate: tenants, keys, customers, events, queues and migrations.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def root(
    ctx: typer.Context,
    api_url: Annotated[
        str | None, typer.Option("--api-url", help="API base URL (FINTEGRATE_API_URL).")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option("--api-key", help="Tenant API key (FINTEGRATE_API_KEY).")
    ] = None,
    admin_key: Annotated[
        str | None,
        typer.Option("--admin-key", help="Operator key (FINTEGRATE_ADMIN_API_KEY)."),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url", help="PostgreSQL URL, postgresql://… (FINTEGRATE_DATABASE_URL)."
        ),
    ] = None,
    rabbitmq_url: Annotated[
        str | None,
        typer.Option(
            "--rabbitmq-url",
            help="AMQP URL, or one per cluster node, comma-separated (FINTEGRATE_RABBITMQ_URL).",
        ),
    ] = None,
    env_file: Annotated[
        Path | None,
        typer.Option(
            "--env-file",
            exists=True,
            dir_okay=False,
            help="Read settings from this file instead of ./.env.",
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Machine-readable JSON on stdout.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Suppress diagnostics.")] = False,
) -> None:
    """Fintegrate operator CLI. Exit codes: 0 ok, 1 error, 2 usage, 3 partial/check failed."""
    overrides = {
        "api_url": api_url,
        "api_key": api_key,
        "admin_api_key": admin_key,
        "database_url": database_url,
        "rabbitmq_url": rabbitmq_url,
    }
    ctx.obj = CliState(
        overrides={k: v for k, v in overrides.items() if v is not None},
        env_file=str(env_file) if env_file else None,
        json=json_output,
        debug=debug,
        quiet=quiet,
    )


app.add_typer(migrate.app, name="migrate")
app.add_typer(consumer.app, name="consumer")
app.add_typer(keys.app, name="keys")
app.add_typer(customers.app, name="customers")
app.add_typer(events.app, name="events")
app.add_typer(queues.app, name="queues")
app.add_typer(config_cmd.app, name="config")
app.add_typer(bench.app, name="bench")
app.add_typer(webhooks.app, name="webhooks")
runtime.register(app)


def run() -> None:
    """Console-script entry point."""
    app()
