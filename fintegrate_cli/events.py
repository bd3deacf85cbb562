"""`fintegrate events`: List, show, resend, redeliver events and show delivery stats."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fintegrate_cli._client import ApiClient, KeyNeed, api_client
from fintegrate_cli._context import state
from fintegrate_cli._errors import EXIT_PARTIAL, CliError
from fintegrate_cli._output import (
    JsonOption,
    confirm,
    emit_record,
    emit_rows,
    err_console,
    info,
    print_json,
    print_table,
    wants_json,
)
from service.db import create_db_engine
from service.delivery import repository as delivery_repository
from service.messaging import outbox

app = typer.Typer(
    help="List, show, resend, redeliver events and show delivery stats.", no_args_is_help=True
)

EVENTS_PATH = "/events"
LIST_COLUMNS = (
    "event_id",
    "event_type",
    "customer_id",
    "publish_status",
    "deliver_status",
    "created_at",
)
GROUP_COLUMNS = ("consumer_name", "event_type", "count")
STATS_COLUMNS = ("event_type", "publish_status", "deliver_status", "count")
VERB = {"resend": "resend (publish pending events now)", "redeliver": "redeliver (publish again)"}


class EventType(StrEnum):
    customer_creation = "customer_creation"
    customer_deletion = "customer_deletion"
    customer_status_change = "customer_status_change"
    consumer_created = "consumer_created"


class PublishStatus(StrEnum):
    pending = "pending"
    published = "published"
    failed = "failed"


class DeliverStatus(StrEnum):
    pending = "pending"
    delivered = "delivered"
    failed = "failed"


# -- library functions (explicit client), used by the commands and by tests ---------------


def republish_filters(
    period_in_days: int, max_try_count: int, event_types: list[str], consumer: str | None
) -> dict[str, Any]:
    """The request body filters shared by the preview and every chunk."""
    body: dict[str, Any] = {
        "period_in_days": period_in_days,
        "max_try_count": max_try_count,
        "event_types": event_types,
    }
    if consumer:
        body["consumer_name"] = consumer
    return body


def preview(client: ApiClient, kind: str, filters: dict[str, Any]) -> dict[str, Any]:
    """The dry run: ``matched`` and the counts per consumer and event type."""
    return dict(client.post(f"{EVENTS_PATH}/{kind}", json={**filters, "dry_run": True}))


def republish_all(
    client: ApiClient,
    kind: str,
    filters: dict[str, Any],
    chunk: int,
    advance: Callable[[int], None] = lambda _n: None,
) -> dict[str, int]:
    """Republish chunk by chunk (following ``next_cursor``); totals of every chunk."""
    totals = {"matched": 0, "republished": 0, "failed": 0}
    cursor = None
    while True:
        body = {**filters, "dry_run": False, "limit": chunk, "cursor": cursor}
        data = client.post(f"{EVENTS_PATH}/{kind}", json=body)
        for key in totals:
            totals[key] += int(data.get(key, 0))
        advance(int(data.get("matched", 0)))
        cursor = data.get("next_cursor")
        if not cursor:
            return totals


def event_stats(settings: Any, consumer: str | None) -> dict[str, Any]:
    """Counts per type and status, outbox backlog and oldest pending age (direct DB)."""
    engine = create_db_engine(settings, pool_size=1)
    try:
        with engine.connect() as connection:
            consumer_id = None
            if consumer:
                consumer_id = delivery_repository.consumer_id_by_name(connection, consumer)
                if consumer_id is None:
                    raise CliError(
                        f"no consumer named {consumer!r}; see `fintegrate consumer list`"
                    )
            counts = delivery_repository.event_counts(connection, consumer_id)
            backlog = outbox.pending_summary(connection)
    finally:
        engine.dispose()
    oldest = backlog.oldest_created_at
    age = (datetime.now(UTC) - oldest).total_seconds() if oldest else None
    return {
        "counts": [dict(row._mapping) for row in counts],
        "outbox_pending": int(backlog.pending),
        "oldest_pending_created_at": oldest.isoformat() if oldest else None,
        "oldest_pending_age_seconds": round(age, 1) if age is not None else None,
    }


# -- commands ------------------------------------------------------------------------------


@app.command("list")
def list_command(
    ctx: typer.Context,
    customer_id: Annotated[
        str | None, typer.Option("--customer-id", help="One customer's events.")
    ] = None,
    event_type: Annotated[
        EventType | None, typer.Option("--event-type", help="Only this type.")
    ] = None,
    publish_status: Annotated[PublishStatus | None, typer.Option("--publish-status")] = None,
    deliver_status: Annotated[DeliverStatus | None, typer.Option("--deliver-status")] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="ISO time: created at or after.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=200, help="Events per page.")] = 50,
    cursor: Annotated[
        str | None, typer.Option("--cursor", help="Continue from next_cursor.")
    ] = None,
    fetch_all: Annotated[
        bool, typer.Option("--all", help="Follow next_cursor to the end.")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """List the tenant's events, oldest first (JSON: an array of events)."""
    params = {
        "customer_id": customer_id,
        "event_type": event_type,
        "publish_status": publish_status,
        "deliver_status": deliver_status,
        "since": since,
        "limit": limit,
        "cursor": cursor,
    }
    with api_client(state(ctx).settings(), "tenant", "events list") as client:
        if fetch_all:
            items, next_cursor = client.all_items(EVENTS_PATH, params), None
        else:
            page = client.get(EVENTS_PATH, params={k: v for k, v in params.items() if v})
            items, next_cursor = page.get("items", []), page.get("next_cursor")
    emit_rows(items, LIST_COLUMNS, wants_json(ctx, json_output), "Events")
    if next_cursor:
        info(f"more events: --cursor {next_cursor}", state(ctx).quiet)


@app.command("show")
def show_command(
    ctx: typer.Context,
    event_id: Annotated[str, typer.Argument(help="Event id (UUID).")],
    json_output: JsonOption = False,
) -> None:
    """One event with its publish and delivery state."""
    with api_client(state(ctx).settings(), "tenant", "events show") as client:
        event = client.get(f"{EVENTS_PATH}/{event_id}")
    emit_record(event, wants_json(ctx, json_output), f"Event {event_id}")


PeriodOption = Annotated[
    int, typer.Option("--period-days", min=1, max=3650, help="Events created in the last N days.")
]
TriesOption = Annotated[
    int, typer.Option("--max-try-count", min=1, help="Only events published fewer than N times.")
]
TypesOption = Annotated[
    list[EventType] | None, typer.Option("--event-type", help="Only these types (repeatable).")
]
ConsumerOption = Annotated[
    str | None, typer.Option("--consumer", help="Operator only: one consumer's events.")
]
DryRunOption = Annotated[bool, typer.Option("--dry-run", help="Show the preview and stop.")]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
ChunkOption = Annotated[
    int, typer.Option("--chunk-size", min=1, max=5000, help="Events per request.")
]


def run_republish(
    ctx: typer.Context,
    kind: str,
    filters: dict[str, Any],
    dry_run: bool,
    yes: bool,
    chunk: int,
    json_output: bool,
) -> None:
    """Preview, confirm, republish with a progress bar, summarise; exit 3 on partial failure."""
    cli = state(ctx)
    as_json = wants_json(ctx, json_output)
    need: KeyNeed = "admin" if "consumer_name" in filters else "either"
    with api_client(cli.settings(), need, f"events {kind}") as client:
        planned = preview(client, kind, filters)
        if not as_json:
            print_table(
                planned.get("groups", []), GROUP_COLUMNS, f"Events to {kind}: {planned['matched']}"
            )
        if dry_run or planned["matched"] == 0:
            if as_json:
                print_json(planned)
            info("dry run: nothing changed" if dry_run else f"nothing to {kind}", cli.quiet)
            return
        confirm(f"{VERB[kind].capitalize()}: {planned['matched']} event(s)?", yes)
        totals = republish_with_progress(
            client, kind, filters, chunk, planned["matched"], cli.quiet
        )
    report_totals(kind, totals, as_json)


def republish_with_progress(
    client: ApiClient, kind: str, filters: dict[str, Any], chunk: int, total: int, quiet: bool
) -> dict[str, int]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err_console, disable=quiet) as progress:
        task = progress.add_task(kind, total=total)
        return republish_all(client, kind, filters, chunk, lambda n: progress.advance(task, n))


def report_totals(kind: str, totals: dict[str, int], as_json: bool) -> None:
    emit_record(totals, as_json, f"{kind} summary")
    if totals["failed"] and totals["republished"]:
        raise CliError(
            f"{kind}: {totals['failed']} event(s) failed to publish; their publish_failure_reason "
            "says why (`fintegrate events show ID`); rerun later",
            EXIT_PARTIAL,
        )
    if totals["failed"]:
        raise CliError(f"{kind}: every event failed to publish; check RabbitMQ and the queues")


@app.command("resend")
def resend_command(
    ctx: typer.Context,
    period_days: PeriodOption = 7,
    max_try_count: TriesOption = 5,
    event_types: TypesOption = None,
    consumer: ConsumerOption = None,
    dry_run: DryRunOption = False,
    yes: YesOption = False,
    chunk_size: ChunkOption = 500,
    json_output: JsonOption = False,
) -> None:
    """Publish events still pending now (publish retries), after a preview and confirmation."""
    filters = republish_filters(
        period_days, max_try_count, [t.value for t in event_types or []], consumer
    )
    run_republish(ctx, "resend", filters, dry_run, yes, chunk_size, json_output)


@app.command("redeliver")
def redeliver_command(
    ctx: typer.Context,
    period_days: PeriodOption = 7,
    max_try_count: TriesOption = 5,
    event_types: TypesOption = None,
    consumer: ConsumerOption = None,
    dry_run: DryRunOption = False,
    yes: YesOption = False,
    chunk_size: ChunkOption = 500,
    json_output: JsonOption = False,
) -> None:
    """Publish again events published but not delivered, after a preview and confirmation."""
    filters = republish_filters(
        period_days, max_try_count, [t.value for t in event_types or []], consumer
    )
    run_republish(ctx, "redeliver", filters, dry_run, yes, chunk_size, json_output)


@app.command("stats")
def stats_command(
    ctx: typer.Context,
    consumer: Annotated[str | None, typer.Option("--consumer", help="Only this consumer.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Counts by publish/deliver status and type, outbox backlog and oldest pending age (DB)."""
    cli = state(ctx)
    stats = event_stats(cli.settings(), consumer)
    if wants_json(ctx, json_output):
        print_json(stats)
        return
    print_table(stats["counts"], STATS_COLUMNS, "Events")
    age = stats["oldest_pending_age_seconds"]
    oldest = f", oldest pending {age:.0f}s old" if age is not None else ""
    info(f"outbox backlog: {stats['outbox_pending']} pending{oldest}")
