"""`fintegrate queues`: Provision tenant queues, show depth, purge, replay dead letters."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from fintegrate_cli._context import state
from fintegrate_cli._errors import EXIT_PARTIAL, EXIT_USAGE, CliError
from fintegrate_cli._output import (
    JsonOption,
    confirm,
    emit_record,
    emit_rows,
    err_console,
    info,
    wants_json,
)
from fintegrate_cli._queue_migration import migrate_queues
from service.config import Settings
from service.consumers.service import consumer_names
from service.events.service import current_payloads, last_delivered_sequences
from service.kit.db import create_db_engine
from service.messaging import topology
from service.messaging.connection import open_blocking
from service.messaging.operate.dlq import (
    DeliveredLookup,
    PayloadLookup,
    ReplayOutcome,
    replay_dead_letters,
)
from service.messaging.operate.inspection import inspect_tenant
from service.messaging.operate.provisioning import TopologyMismatch, provision_many
from service.messaging.operate.queue_ops import purge_queue, queue_status, ready_count
from service.messaging.publish.publisher import ConfirmingPublisher

app = typer.Typer(
    help="Provision tenant queues, show depth, purge, replay dead letters.", no_args_is_help=True
)

PROVISION_COLUMNS = ("consumer_name", "queue", "dlq", "result")
STATUS_COLUMNS = ("consumer_name", "queue", "ready", "unacked", "consumers", "dlq_ready")
ConsumerArgument = Annotated[str, typer.Argument(help="Consumer (tenant) name.")]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


def checked_name(name: str) -> str:
    if not topology.CONSUMER_NAME_PATTERN.match(name):
        raise CliError(f"consumer name {name!r} must match ^[a-z0-9_]+$", EXIT_USAGE)
    return name


def names_from_database(settings: Settings) -> list[str]:
    """Every consumer's name, read from PostgreSQL."""
    engine = create_db_engine(settings.database, pool_size=1)
    try:
        with engine.connect() as connection:
            return consumer_names(connection)
    finally:
        engine.dispose()


def provision_rows(settings: Settings, names: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Provision each tenant; table rows and the advice for every mismatch."""
    rows: list[dict[str, Any]] = []
    advice: list[str] = []
    for outcome in provision_many(settings, names):
        if isinstance(outcome, TopologyMismatch):
            report = outcome.report
            rows.append({**report.as_dict(), "result": "differs (not changed)"})
            advice.extend(f"{report.consumer_name}: {line}" for line in report.advice())
        else:
            rows.append({**outcome.as_dict(), "result": "provisioned"})
    return rows, advice


@app.command("provision")
def provision_command(
    ctx: typer.Context,
    consumers: Annotated[list[str] | None, typer.Argument(help="Consumer names.")] = None,
    consumer_option: Annotated[
        list[str] | None,
        typer.Option("--consumer", "-c", help="A consumer name (repeatable), like naming it."),
    ] = None,
    all_consumers: Annotated[
        bool, typer.Option("--all", help="Every consumer in the database.")
    ] = False,
    migrate: Annotated[
        bool,
        typer.Option(
            "--migrate",
            help="Move queues whose arguments or type differ (or a stopped migration's) to "
            "the expected ones, keeping every message in order; stop the workers first. "
            "Without names: every consumer in the database.",
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Compare with the broker; change nothing.")
    ] = False,
    yes: YesOption = False,
    json_output: JsonOption = False,
) -> None:
    """Declare exchange, queue, DLQ and bindings per tenant (idempotent); report differences."""
    cli = state(ctx)
    settings = cli.settings()
    names = [checked_name(name) for name in [*(consumers or []), *(consumer_option or [])]]
    if all_consumers or (migrate and not names):
        names = sorted(set(names) | set(names_from_database(settings)))
    if not names:
        raise CliError("name one or more consumers, or pass --all", EXIT_USAGE)
    as_json = wants_json(ctx, json_output)
    if migrate:
        migrate_queues(settings, names, dry_run, yes, as_json, cli.quiet)
        if not dry_run:
            provision_and_report(settings, names, as_json, show_rows=False)
        return
    if dry_run:
        reports = [inspect_tenant(settings, name).as_dict() for name in names]
        rows = [{**r, "result": "ok" if r["ok"] else "would change"} for r in reports]
        emit_rows(
            rows, PROVISION_COLUMNS, as_json, "Provisioning plan (dry run)", json_data=reports
        )
        for report in reports:
            for line in report["advice"]:
                info(f"{report['consumer_name']}: {line}", cli.quiet)
        return
    provision_and_report(settings, names, as_json)


def provision_and_report(
    settings: Settings, names: list[str], as_json: bool, show_rows: bool = True
) -> None:
    """Provision, print the rows (a migration printed its own) and the advice; exit 3 on a
    difference."""
    rows, advice = provision_rows(settings, names)
    if show_rows:
        emit_rows(rows, PROVISION_COLUMNS, as_json, "Provisioned queues")
    for line in advice:
        err_console.print(line, markup=False, highlight=False, soft_wrap=True)
    if advice:
        raise CliError(
            "some live queues differ from the expected topology (see above)", EXIT_PARTIAL
        )


@app.command("status")
def status_command(
    ctx: typer.Context,
    consumers: Annotated[
        list[str] | None, typer.Argument(help="Consumer names (default: all).")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Depth, unacked, consumer count and DLQ depth per tenant (management API, else AMQP)."""
    settings = state(ctx).settings()
    names = [checked_name(name) for name in consumers] if consumers else None
    if names is None and not settings.broker.management_url:
        names = names_from_database(settings)
    rows = [row.as_dict() for row in queue_status(settings.broker, names)]
    emit_rows(rows, STATUS_COLUMNS, wants_json(ctx, json_output), "Tenant queues")


@app.command("purge")
def purge_command(
    ctx: typer.Context,
    consumer: ConsumerArgument,
    dlq: Annotated[
        bool, typer.Option("--dlq", help="Purge the dead-letter queue instead.")
    ] = False,
    yes: YesOption = False,
    json_output: JsonOption = False,
) -> None:
    """Drop every ready message of a tenant's queue (or DLQ), after confirmation."""
    settings = state(ctx).settings()
    name = checked_name(consumer)
    queue = topology.dlq_name(name) if dlq else topology.queue_name(name)
    depth = ready_count(settings.broker, queue)
    if depth is None:
        raise CliError(f"queue {queue} does not exist; `fintegrate queues provision {name}`")
    confirm(f"Purge {depth} message(s) from {queue}? They cannot be recovered.", yes)
    purged = purge_queue(settings.broker, queue)
    emit_record({"queue": queue, "purged": purged}, wants_json(ctx, json_output), "Purged")


@app.command("replay-dlq")
def replay_dlq_command(
    ctx: typer.Context,
    consumer: ConsumerArgument,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Move at most N.")] = None,
    include_stale: Annotated[
        bool,
        typer.Option(
            "--include-stale",
            help="Also replay dead letters older than their customer's last delivered event "
            "(fintegrate consume skips them); default: leave them in the DLQ and list them.",
        ),
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count only; move nothing.")] = False,
    yes: YesOption = False,
    json_output: JsonOption = False,
) -> None:
    """Move dead letters back to the tenant queue in per-customer order, original routing key."""
    cli = state(ctx)
    settings = cli.settings()
    name = checked_name(consumer)
    depth = ready_count(settings.broker, topology.dlq_name(name))
    if depth is None:
        raise CliError(f"{topology.dlq_name(name)} does not exist; provision {name} first")
    planned = min(depth, limit) if limit else depth  # a snapshot: re-dead-lettered ones wait
    as_json = wants_json(ctx, json_output)
    if dry_run or planned == 0:
        emit_record(
            {"dlq": topology.dlq_name(name), "dead_letters": depth, "would_replay": planned},
            as_json,
            "Replay plan",
        )
        return
    confirm(f"Move {planned} dead letter(s) back to {topology.queue_name(name)}?", yes)
    outcome = replay_with_progress(settings, name, planned, cli.quiet, include_stale)
    emit_record(replay_record(outcome, include_stale), as_json, "Replay")
    if outcome.stale:
        info(
            f"{outcome.stale} stale dead letter(s) left in the DLQ: each is at or below its "
            "customer's last delivered sequence, so the worker would skip it; "
            "--include-stale replays them anyway",
            cli.quiet,
        )
    if outcome.failed:
        raise CliError(
            f"replay stopped: {outcome.failed} dead letter(s) stayed in the DLQ",
            EXIT_PARTIAL if outcome.replayed else 1,
        )


def replay_record(outcome: ReplayOutcome, include_stale: bool) -> dict[str, Any]:
    """What a replay run did, for the table or ``--json``."""
    return {
        "replayed": outcome.replayed,
        "failed": outcome.failed,
        "stale_checked": not include_stale,
        "stale_left_in_dlq": outcome.stale,
        "stale_event_ids": outcome.stale_event_ids,
        "reasons": outcome.reasons,
    }


def delivered_lookup(engine: Engine) -> DeliveredLookup:
    """Last delivered sequences read from PostgreSQL, for the stale check of a replay."""

    def look_up(consumer_id: str, customer_ids: list[str]) -> dict[str | None, int]:
        with engine.connect() as connection:
            return last_delivered_sequences(connection, consumer_id, customer_ids)

    return look_up


def payload_lookup(engine: Engine) -> PayloadLookup:
    """Events' payloads as PostgreSQL holds them now: a replay sends erased ones erased."""

    def look_up(event_ids: list[str]) -> dict[str, Any]:
        with engine.connect() as connection:
            return current_payloads(connection, event_ids)

    return look_up


def replay_with_progress(
    settings: Settings, name: str, planned: int, quiet: bool, include_stale: bool = False
) -> ReplayOutcome:
    columns = (TextColumn("replaying"), BarColumn(), MofNCompleteColumn())
    engine = None if include_stale else create_db_engine(settings.database, pool_size=1)
    connection = open_blocking(settings.broker.url)
    try:
        with (
            ConfirmingPublisher(settings.broker.url) as publisher,
            Progress(*columns, console=err_console, disable=quiet) as progress,
        ):
            task = progress.add_task("replay", total=planned)
            return replay_dead_letters(
                connection.channel(),
                publisher,
                name,
                planned,
                lambda n: progress.advance(task, n),
                None if engine is None else delivered_lookup(engine),
                None if engine is None else payload_lookup(engine),
            )
    except OperationalError as exc:
        raise CliError(
            f"cannot read the last delivered sequences from PostgreSQL ({exc.orig}); nothing "
            "was replayed; start PostgreSQL or pass --include-stale to skip the check"
        ) from exc
    finally:
        if connection.is_open:
            connection.close()
        if engine is not None:
            engine.dispose()
