"""`events archive` from the CLI: preview, confirmation, the archive with a progress bar."""

from __future__ import annotations

import threading
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fintegrate_cli._context import state
from fintegrate_cli._errors import EXIT_PARTIAL, CliError
from fintegrate_cli._output import confirm, err_console, info, print_json, print_table, wants_json
from service.events import archive
from service.events.archive_lock import archive_lock
from service.events.locks import LockPolicy, create_maintenance_engine
from service.messaging.shutdown import install_stop_handlers

APPLICATION_NAME = "fintegrate-archive"

PLAN_COLUMNS = ("partition", "range_start", "range_end", "events", "not_final", "to_expire")


def plan(settings: Any, older_than_days: int, directory: str) -> archive.ArchivePlan:
    """The preview (library call; validates the input, changes nothing)."""
    engine = create_maintenance_engine(settings, APPLICATION_NAME)
    try:
        expiry_days = settings.event_delivery_expiry_days
        return archive.plan_archive(engine, older_than_days, directory, expiry_days)
    except archive.ArchiveError as exc:
        raise CliError(str(exc)) from exc
    finally:
        engine.dispose()


def execute(
    settings: Any, chosen: archive.ArchivePlan, quiet: bool = True
) -> archive.ArchiveResult:
    """Run a previewed plan with a progress bar on stderr (library call), under the history
    lock and the directory's lock; a stop signal ends it between partitions."""
    engine = create_maintenance_engine(settings, APPLICATION_NAME)
    columns = (TextColumn("archive"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    stop = threading.Event()
    restore = install_stop_handlers(stop)
    try:
        with (
            archive_lock(settings, chosen.directory, "events archive"),
            Progress(*columns, console=err_console, disable=quiet) as progress,
        ):
            task = progress.add_task("archive", total=chosen.events)
            return archive.run_archive(
                engine,
                chosen,
                lambda n: progress.advance(task, n),
                policy=LockPolicy.from_settings(settings),
                stop=stop,
            )
    except archive.ArchiveError as exc:
        raise CliError(str(exc)) from exc
    finally:
        restore()
        engine.dispose()


def run_archive_command(
    ctx: typer.Context, older_than: int, directory: str, dry_run: bool, yes: bool, json_flag: bool
) -> None:
    """Preview, confirm, archive, summarise."""
    cli = state(ctx)
    as_json = wants_json(ctx, json_flag)
    chosen = plan(cli.settings(), older_than, directory)
    if not as_json:
        show_plan(chosen)
    if dry_run or not chosen.archive:
        if as_json:
            print_json({**chosen.as_dict(), "dry_run": dry_run})
        info("dry run: nothing changed" if dry_run else "nothing to archive", cli.quiet)
        return
    confirm(
        f"Archive {chosen.events} event(s) to {chosen.directory} and drop "
        f"{len(chosen.archive)} partition(s)"
        f" ({sum(p.expirable for p in chosen.archive)} never confirmed expire first)?",
        yes,
    )
    result = execute(cli.settings(), chosen, quiet=cli.quiet or as_json)
    if as_json:
        print_json(result.as_dict())
    else:
        print_table(result.files, ("file", "events", "bytes", "sha256"), "Archived")
        info(
            f"archived {sum(f['events'] for f in result.files)} event(s), dropped "
            f"{len(result.dropped)} partition(s), expired {result.expired_events} never "
            f"confirmed; manifest: {chosen.directory}/manifest.json",
            cli.quiet,
        )
    if result.skipped:
        name, reason = next(iter(result.skipped.items()))
        raise CliError(
            f"{len(result.skipped)} partition(s) left as they were, first {name}: {reason}",
            EXIT_PARTIAL,
        )


def show_plan(chosen: archive.ArchivePlan) -> None:
    rows = [p.as_dict() for p in chosen.archive]
    print_table(rows, PLAN_COLUMNS, f"To archive (before {chosen.cutoff:%Y-%m-%d %H:%M} UTC)")
    if chosen.keep:
        kept = [p.as_dict() for p in chosen.keep]
        print_table(kept, PLAN_COLUMNS, "Kept: events whose delivery is not final")
        info(
            f"{sum(p.not_final for p in chosen.keep)} event(s) not final stay in PostgreSQL "
            "with their partition (never published, or not yet past "
            "FINTEGRATE_EVENT_DELIVERY_EXPIRY_DAYS); `fintegrate events resend|redeliver` "
            "finishes them"
        )
