"""`fintegrate events`: List, show, resend, redeliver, archive events; delivery stats."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any
from uuid import UUID

import typer

from fintegrate_cli._archive import run_archive_command
from fintegrate_cli._client import api_client
from fintegrate_cli._context import state
from fintegrate_cli._errors import EXIT_USAGE, CliError
from fintegrate_cli._output import (
    JsonOption,
    console,
    emit_record,
    emit_rows,
    info,
    print_json,
    print_table,
    wants_json,
)
from fintegrate_cli._republish import EVENTS_PATH, republish_filters, run_republish
from service.consumers.service import find_consumer_id
from service.events.service import event_counts, outbox_backlog
from service.events.timeline import Timeline, event_timeline
from service.kit.db import create_db_engine
from service.messaging import topology
from service.webhooks.service import delivery_backlog

app = typer.Typer(
    help="List, show, resend, redeliver, archive events; delivery stats.", no_args_is_help=True
)

LIST_COLUMNS = (
    "event_id",
    "event_type",
    "customer_id",
    "publish_status",
    "deliver_status",
    "created_at",
)
STATS_COLUMNS = ("event_type", "publish_status", "deliver_status", "count")
TRACE_COLUMNS = ("at", "+seconds", "step", "detail")
NEIGHBOUR_COLUMNS = ("role", "sequence", "event_id", "publish_status", "deliver_status")


# The choices of --event-type, built from the one vocabulary (Typer takes no list of a
# Literal); mypy cannot see the members of an enum built at runtime, hence the ignore.
EventType = StrEnum("EventType", [(name, name) for name in topology.EVENT_TYPES])  # type: ignore[misc]


class PublishStatus(StrEnum):
    pending = "pending"
    published = "published"
    failed = "failed"


class DeliverStatus(StrEnum):
    pending = "pending"
    delivered = "delivered"
    failed = "failed"


# -- library functions (explicit client), used by the commands and by tests ---------------


def event_stats(settings: Any, consumer: str | None) -> dict[str, Any]:
    """Counts per type and status (maintained counters), outbox backlog, oldest pending age."""
    engine = create_db_engine(settings, pool_size=1)
    try:
        with engine.connect() as connection:
            consumer_id = None
            if consumer:
                consumer_id = find_consumer_id(connection, consumer)
                if consumer_id is None:
                    raise CliError(
                        f"no consumer named {consumer!r}; see `fintegrate consumer list`"
                    )
            counts = event_counts(connection, consumer_id)
            connection.commit()
            backlog = outbox_backlog(connection)
            webhooks = delivery_backlog(connection, consumer_id)
    finally:
        engine.dispose()
    oldest = backlog.oldest_created_at
    age = (datetime.now(UTC) - oldest).total_seconds() if oldest else None
    return {
        "counts": counts,
        "outbox_pending": int(backlog.pending),
        "oldest_pending_created_at": oldest.isoformat() if oldest else None,
        "oldest_pending_age_seconds": round(age, 1) if age is not None else None,
        "webhooks": {
            "pending": webhooks["pending"],
            "failed": webhooks["failed"],
            "oldest_pending_event_at": _iso(webhooks["oldest_pending_event_at"]),
        },
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def trace_event(settings: Any, event_id: str) -> Timeline:
    """The timeline of ``event_id`` read from the database; CliError when there is none."""
    try:
        wanted = UUID(event_id)
    except ValueError as exc:
        raise CliError(f"{event_id!r} is not an event id (a UUID)", EXIT_USAGE) from exc
    engine = create_db_engine(settings, pool_size=1)
    try:
        with engine.connect() as connection:
            timeline = event_timeline(connection, wanted)
    finally:
        engine.dispose()
    if timeline is None:
        raise CliError(f"no event {event_id}; see `fintegrate events list`")
    return timeline


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
    publish_status: Annotated[
        PublishStatus | None,
        typer.Option("--publish-status", help="Only events with this publish status."),
    ] = None,
    deliver_status: Annotated[
        DeliverStatus | None,
        typer.Option("--deliver-status", help="Only events with this delivery status."),
    ] = None,
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
            page = client.page(EVENTS_PATH, params)
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
    int | None,
    typer.Option(
        "--max-try-count",
        min=1,
        help="Only events tried fewer than N times (default: any, so stuck events are included).",
    ),
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


def republish_command(kind: str) -> Callable[..., None]:
    """The command of one republish ``kind`` (``resend`` or ``redeliver``): same options."""

    def command(
        ctx: typer.Context,
        period_days: PeriodOption = 7,
        max_try_count: TriesOption = None,
        event_types: TypesOption = None,
        consumer: ConsumerOption = None,
        dry_run: DryRunOption = False,
        yes: YesOption = False,
        chunk_size: ChunkOption = 500,
        json_output: JsonOption = False,
    ) -> None:
        filters = republish_filters(
            period_days, max_try_count, [t.value for t in event_types or []], consumer
        )
        run_republish(ctx, kind, filters, dry_run, yes, chunk_size, json_output)

    return command


app.command(
    "resend",
    help="Publish events still pending now (publish retries), after a preview and confirmation.",
)(republish_command("resend"))
app.command(
    "redeliver",
    help="Publish again events published but not delivered, after a preview and confirmation.",
)(republish_command("redeliver"))


@app.command("stats")
def stats_command(
    ctx: typer.Context,
    consumer: Annotated[str | None, typer.Option("--consumer", help="Only this consumer.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Counts by publish/deliver status and type, outbox backlog and oldest pending age, and
    the webhook channel's pending and failed deliveries (DB)."""
    cli = state(ctx)
    stats = event_stats(cli.settings(), consumer)
    if wants_json(ctx, json_output):
        print_json(stats)
        return
    print_table(stats["counts"], STATS_COLUMNS, "Events")
    age = stats["oldest_pending_age_seconds"]
    oldest = f", oldest pending {age:.0f}s old" if age is not None else ""
    info(f"outbox backlog: {stats['outbox_pending']} pending{oldest}")
    hooks = stats["webhooks"]
    info(f"webhook deliveries: {hooks['pending']} pending, {hooks['failed']} failed")


@app.command("trace")
def trace_command(
    ctx: typer.Context,
    event_id: Annotated[str, typer.Argument(help="Event id (UUID), of any consumer.")],
    json_output: JsonOption = False,
) -> None:
    """An event's life as a timeline: created by which request, publish attempts, receipts,
    and what holds it back (operator, reads the database)."""
    timeline = trace_event(state(ctx).settings(), event_id)
    if wants_json(ctx, json_output):
        print_json(timeline.as_dict())
        return
    console.print(
        f"Event {timeline.event_id} ({timeline.event_type}, sequence {timeline.sequence}, "
        f"consumer {timeline.consumer_id}): [bold]{timeline.state}[/bold]"
    )
    rows = [
        {
            "at": step.at.isoformat() if step.at else "(now)",
            "+seconds": "" if step.since_previous_seconds is None else step.since_previous_seconds,
            "step": step.step,
            "detail": step.detail,
        }
        for step in timeline.steps
    ]
    print_table(rows, TRACE_COLUMNS, "Timeline")
    if timeline.neighbours:
        print_table(timeline.neighbours, NEIGHBOUR_COLUMNS, "Its aggregate around it")


@app.command("archive")
def archive_command(
    ctx: typer.Context,
    older_than: Annotated[
        int, typer.Option("--older-than", help="Archive final events older than N days (>= 1).")
    ],
    directory: Annotated[
        str, typer.Option("--to", help="Existing, writable directory for *.jsonl.gz + manifest.")
    ],
    dry_run: DryRunOption = False,
    yes: YesOption = False,
    json_output: JsonOption = False,
) -> None:
    """Archive final events to gzip JSON lines, then drop their partitions (DB, preview first)."""
    run_archive_command(ctx, older_than, directory, dry_run, yes, json_output)
