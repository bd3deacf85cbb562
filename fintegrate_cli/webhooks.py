"""`fintegrate webhooks`: the delivery process, a tenant's endpoints, attempts and recovery."""

from __future__ import annotations

import threading
from enum import StrEnum
from typing import Annotated, Any

import typer

from fintegrate_cli._client import ApiClient, api_client
from fintegrate_cli._context import state
from fintegrate_cli._errors import EXIT_USAGE, CliError
from fintegrate_cli._output import JsonOption, confirm, emit_record, emit_rows, info, wants_json
from fintegrate_cli.workers import (
    MetricsHostOption,
    MetricsPortOption,
    configure_logging,
    serve_metrics,
)
from service.kit import tracing
from service.kit.db import bound_database_waits, create_db_engine
from service.kit.heap import freeze_startup_objects
from service.messaging.shutdown import install_stop_handlers
from service.webhooks.delivery.process import WebhookDeliverer
from service.webhooks.signing import SecretsUnavailable

app = typer.Typer(
    help="Webhooks: the delivery process, endpoints, attempts and recovery.",
    no_args_is_help=True,
)
endpoints_app = typer.Typer(help="A tenant's webhook endpoints (tenant API).", no_args_is_help=True)
app.add_typer(endpoints_app, name="endpoints")

ENDPOINTS_PATH = "/webhooks/endpoints"
ENDPOINT_COLUMNS = ("endpoint_id", "url", "status", "event_types", "created_at")
ATTEMPT_COLUMNS = (
    "started_at",
    "event_id",
    "attempt_number",
    "status",
    "response_status",
    "duration_ms",
    "error",
    "next_attempt_at",
)
SHOWN_ONCE = "store the secret now: it is shown only once"


class EndpointStatus(StrEnum):
    enabled = "enabled"
    disabled = "disabled"


class AttemptStatus(StrEnum):
    succeeded = "succeeded"
    retrying = "retrying"
    failed = "failed"


# -- library calls (the commands below are one call each) ---------------------------------


def create_endpoint(
    client: ApiClient, url: str, event_types: list[str] | None, description: str | None
) -> dict[str, Any]:
    body: dict[str, Any] = {"url": url}
    if event_types:
        body["event_types"] = event_types
    if description is not None:
        body["description"] = description
    return dict(client.post(ENDPOINTS_PATH, json=body))


def update_endpoint(client: ApiClient, endpoint_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    return dict(client.patch(f"{ENDPOINTS_PATH}/{endpoint_id}", json=changes))


def list_attempts(
    client: ApiClient, endpoint_id: str, event_id: str | None, status: str | None
) -> list[dict[str, Any]]:
    params = {"event_id": event_id, "status": status, "limit": 200}
    path = f"{ENDPOINTS_PATH}/{endpoint_id}/attempts"
    return client.all_items(path, params)


def recover(client: ApiClient, endpoint_id: str, since: str, until: str | None) -> dict[str, Any]:
    body = {"since": since, **({"until": until} if until else {})}
    return dict(client.post(f"{ENDPOINTS_PATH}/{endpoint_id}/recover", json=body))


# -- the delivery process -----------------------------------------------------------------


@app.command("deliver")
def deliver_command(
    ctx: typer.Context,
    once: Annotated[
        bool, typer.Option("--once", help="Deliver what is due now, then exit.")
    ] = False,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            min=1,
            max=256,
            help="POSTs in flight (FINTEGRATE_WEBHOOK_DELIVERY_CONCURRENCY).",
        ),
    ] = None,
    metrics_port: MetricsPortOption = None,
    metrics_host: MetricsHostOption = "127.0.0.1",
) -> None:
    """POST events to the tenants' webhook endpoints until SIGTERM/SIGINT (several may run)."""
    cli = state(ctx)
    settings = cli.settings()
    serve_metrics(metrics_port, metrics_host)
    if concurrency is not None:
        settings = settings.updated({"webhook_delivery_concurrency": concurrency})
    configure_logging(cli.quiet, cli.debug)
    tracing.configure("fintegrate-webhooks")
    bound_database_waits(settings.database)
    engine = create_db_engine(
        settings.database, pool_size=min(settings.webhooks.delivery_concurrency, 8) + 2
    )
    stop = threading.Event()
    restore = install_stop_handlers(stop)
    try:
        deliverer = WebhookDeliverer.from_settings(settings, engine, stop)
    except (SecretsUnavailable, ValueError) as exc:
        restore()
        engine.dispose()
        raise CliError(str(exc), EXIT_USAGE) from exc
    freeze_startup_objects()
    try:
        totals = deliverer.drain() if once else deliverer.run()
    finally:
        deliverer.close()
        restore()
        engine.dispose()
        tracing.flush()
    info(
        f"webhooks deliver: {totals.delivered} delivered, {totals.retrying} to retry, "
        f"{totals.failed} failed, {totals.lost_claims} lost claims",
        cli.quiet,
    )


# -- endpoints ----------------------------------------------------------------------------


@endpoints_app.command("create")
def create_command(
    ctx: typer.Context,
    url: Annotated[str, typer.Argument(help="https:// URL that receives the POSTs.")],
    event_type: Annotated[
        list[str] | None,
        typer.Option("--event-type", help="Only this event type (repeat; default: every type)."),
    ] = None,
    description: Annotated[str | None, typer.Option("--description", help="A note.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Register an endpoint; prints its signing secret once."""
    cli = state(ctx)
    with api_client(cli.settings(), "tenant", "webhooks endpoints create") as client:
        record = create_endpoint(client, url, event_type, description)
    emit_record(record, wants_json(ctx, json_output), "Webhook endpoint created")
    info(SHOWN_ONCE, cli.quiet)


@endpoints_app.command("list")
def list_command(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """The tenant's endpoints (JSON: an array)."""
    with api_client(state(ctx).settings(), "tenant", "webhooks endpoints list") as client:
        items = client.all_items(ENDPOINTS_PATH, {"limit": 200})
    emit_rows(items, ENDPOINT_COLUMNS, wants_json(ctx, json_output), "Webhook endpoints")


@endpoints_app.command("show")
def show_command(
    ctx: typer.Context,
    endpoint_id: Annotated[str, typer.Argument(help="The endpoint's id.")],
    json_output: JsonOption = False,
) -> None:
    """One endpoint (never its secret)."""
    with api_client(state(ctx).settings(), "tenant", "webhooks endpoints show") as client:
        record = client.get(f"{ENDPOINTS_PATH}/{endpoint_id}")
    emit_record(record, wants_json(ctx, json_output), "Webhook endpoint")


@endpoints_app.command("update")
def update_command(
    ctx: typer.Context,
    endpoint_id: Annotated[str, typer.Argument(help="The endpoint's id.")],
    url: Annotated[str | None, typer.Option("--url", help="A new URL.")] = None,
    event_type: Annotated[
        list[str] | None, typer.Option("--event-type", help="Only these types (repeat).")
    ] = None,
    all_types: Annotated[bool, typer.Option("--all-types", help="Every event type again.")] = False,
    description: Annotated[str | None, typer.Option("--description", help="A note.")] = None,
    status: Annotated[
        EndpointStatus | None, typer.Option("--status", help="enabled or disabled.")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Change an endpoint's url, event types, description or status."""
    changes: dict[str, Any] = {"url": url, "description": description}
    changes = {k: v for k, v in changes.items() if v is not None}
    if status is not None:
        changes["status"] = status.value
    if event_type and all_types:
        raise CliError("--event-type and --all-types exclude each other", EXIT_USAGE)
    if event_type or all_types:
        changes["event_types"] = event_type or None
    if not changes:
        raise CliError("nothing to change: pass --url, --event-type, --status, …", EXIT_USAGE)
    with api_client(state(ctx).settings(), "tenant", "webhooks endpoints update") as client:
        record = update_endpoint(client, endpoint_id, changes)
    emit_record(record, wants_json(ctx, json_output), "Webhook endpoint updated")


@endpoints_app.command("delete")
def delete_command(
    ctx: typer.Context,
    endpoint_id: Annotated[str, typer.Argument(help="The endpoint's id.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the endpoint and stop.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Delete an endpoint; deliveries still pending for it are cancelled."""
    cli = state(ctx)
    as_json = wants_json(ctx, json_output)
    with api_client(cli.settings(), "tenant", "webhooks endpoints delete") as client:
        if dry_run:
            emit_record(client.get(f"{ENDPOINTS_PATH}/{endpoint_id}"), as_json, "Would delete")
            info("dry run: nothing changed", cli.quiet)
            return
        confirm(f"Delete webhook endpoint {endpoint_id}?", yes)
        record = client.delete(f"{ENDPOINTS_PATH}/{endpoint_id}")
    emit_record(record, as_json, "Webhook endpoint deleted")


@endpoints_app.command("rotate-secret")
def rotate_secret_command(
    ctx: typer.Context,
    endpoint_id: Annotated[str, typer.Argument(help="The endpoint's id.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_output: JsonOption = False,
) -> None:
    """A new signing secret (printed once); the old one still signs during the grace."""
    cli = state(ctx)
    confirm(f"Rotate the signing secret of webhook endpoint {endpoint_id}?", yes)
    with api_client(cli.settings(), "tenant", "webhooks endpoints rotate-secret") as client:
        record = client.post(f"{ENDPOINTS_PATH}/{endpoint_id}/rotate-secret")
    emit_record(record, wants_json(ctx, json_output), "Secret rotated")
    info(SHOWN_ONCE, cli.quiet)


# -- attempts and recovery ----------------------------------------------------------------


@app.command("attempts")
def attempts_command(
    ctx: typer.Context,
    endpoint_id: Annotated[str, typer.Argument(help="The endpoint's id.")],
    event_id: Annotated[str | None, typer.Option("--event-id", help="Only this event.")] = None,
    status: Annotated[
        AttemptStatus | None,
        typer.Option("--status", help="Only attempts with this status (failed: given up)."),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Delivery attempts to an endpoint, oldest first."""
    with api_client(state(ctx).settings(), "tenant", "webhooks attempts") as client:
        items = list_attempts(client, endpoint_id, event_id, status.value if status else None)
    emit_rows(items, ATTEMPT_COLUMNS, wants_json(ctx, json_output), "Webhook attempts")


@app.command("recover")
def recover_command(
    ctx: typer.Context,
    endpoint_id: Annotated[str, typer.Argument(help="The endpoint's id.")],
    since: Annotated[str, typer.Option("--since", help="RFC 3339 time: events created from.")],
    until: Annotated[
        str | None, typer.Option("--until", help="RFC 3339 time: events created before.")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Send the window's events to the endpoint again, each customer's in order."""
    window = f"{since} .. {until or 'now'}"
    confirm(f"Send every event of {window} to webhook endpoint {endpoint_id} again?", yes)
    with api_client(state(ctx).settings(), "tenant", "webhooks recover") as client:
        record = recover(client, endpoint_id, since, until)
    emit_record(record, wants_json(ctx, json_output), "Recovery queued")
