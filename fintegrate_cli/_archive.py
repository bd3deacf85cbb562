"""`events archive` from the CLI: preview, confirmation, the archive with a progress bar.

The run takes the history lock and the directory's lock first (a second run says who holds
them and exits 1), moves rows waiting in the DEFAULT partition into partitions of their own
(so the archive reaches them), then previews, asks and archives under those locks.
"""

from __future__ import annotations

import threading
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import Engine

from fintegrate_cli._context import state
from fintegrate_cli._errors import EXIT_PARTIAL, CliError
from fintegrate_cli._output import confirm, err_console, info, print_json, print_table, wants_json
from service.config import Settings
from service.events import archive
from service.events.archive_files import check_directory
from service.events.archive_lock import archive_lock
from service.events.locks import LockBusy, LockPolicy, create_maintenance_engine
from service.events.maintenance import move_default_rows
from service.messaging.shutdown import install_stop_handlers

PLAN_COLUMNS = ("partition", "range_start", "range_end", "events", "not_final", "to_expire")
APPLICATION_NAME = "fintegrate-archive"


def plan(settings: Settings, older_than_days: int, directory: str) -> archive.ArchivePlan:
    """The preview (library call; validates the input, changes nothing)."""
    engine = create_maintenance_engine(settings.database, APPLICATION_NAME)
    try:
        return _plan(engine, settings, older_than_days, directory)
    except archive.ArchiveError as exc:
        raise CliError(str(exc)) from exc
    finally:
        engine.dispose()


def _plan(
    engine: Engine, settings: Settings, older_than_days: int, directory: str | Path
) -> archive.ArchivePlan:
    expiry_days = settings.history.delivery_expiry_days
    return archive.plan_archive(engine, older_than_days, directory, expiry_days)


def execute(
    engine: Engine,
    settings: Settings,
    chosen: archive.ArchivePlan,
    stop: threading.Event,
    quiet: bool = True,
) -> archive.ArchiveResult:
    """Run a previewed plan with a progress bar on stderr (library call; locks held)."""
    columns = (TextColumn("archive"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, disable=quiet) as progress:
        task = progress.add_task("archive", total=chosen.events)
        return archive.run_archive(
            engine,
            chosen,
            lambda n: progress.advance(task, n),
            policy=LockPolicy.from_settings(settings.history),
            stop=stop,
        )


def run_archive_command(
    ctx: typer.Context, older_than: int, directory: str, dry_run: bool, yes: bool, json_flag: bool
) -> None:
    """Preview (dry run), or lock, move DEFAULT rows, preview, confirm, archive, summarise."""
    cli = state(ctx)
    as_json = wants_json(ctx, json_flag)
    settings = cli.settings()
    if dry_run:
        chosen = plan(settings, older_than, directory)
        _show(chosen, as_json, dry_run=True)
        info("dry run: nothing changed", cli.quiet)
        return
    try:
        archive.check_days(older_than)
        target = check_directory(Path(directory))
    except archive.ArchiveError as exc:
        raise CliError(str(exc)) from exc
    engine = create_maintenance_engine(settings.database, APPLICATION_NAME)
    stop = threading.Event()
    restore = install_stop_handlers(stop)
    try:
        with archive_lock(settings.database, target, "events archive"):
            policy = LockPolicy.from_settings(settings.history)
            move_default_rows(engine, settings.history.partition_span_days, policy, stop)
            chosen = _plan(engine, settings, older_than, target)
            _show(chosen, as_json, dry_run=False)
            if not chosen.archive:
                info("nothing to archive", cli.quiet)
                return
            _confirm(chosen, yes)
            result = execute(engine, settings, chosen, stop, quiet=cli.quiet or as_json)
    except (archive.ArchiveError, LockBusy) as exc:
        raise CliError(str(exc)) from exc
    finally:
        restore()
        engine.dispose()
    _summarise(result, chosen, as_json, cli.quiet)


def _show(chosen: archive.ArchivePlan, as_json: bool, dry_run: bool) -> None:
    if not as_json:
        show_plan(chosen)
    elif dry_run or not chosen.archive:
        print_json({**chosen.as_dict(), "dry_run": dry_run})


def _confirm(chosen: archive.ArchivePlan, yes: bool) -> None:
    confirm(
        f"Archive {chosen.events} event(s) to {chosen.directory} and drop "
        f"{len(chosen.archive)} partition(s)"
        f" ({sum(p.expirable for p in chosen.archive)} never confirmed expire first)?",
        yes,
    )


def _summarise(
    result: archive.ArchiveResult, chosen: archive.ArchivePlan, as_json: bool, quiet: bool
) -> None:
    if as_json:
        print_json(result.as_dict())
    else:
        print_table(result.files, ("file", "events", "bytes", "sha256"), "Archived")
        info(
            f"archived {sum(f['events'] for f in result.files)} event(s), dropped "
            f"{len(result.dropped)} partition(s), expired {result.expired_events} never "
            f"confirmed; manifest: {chosen.directory}/manifest.json",
            quiet,
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
    if chosen.default_rows:
        info(
            f"{chosen.default_rows} event(s) older than the cut-off wait in the DEFAULT "
            "partition; a run (or `fintegrate maintain`) moves them into partitions of their "
            "own first, then archives them"
        )
    if chosen.keep:
        kept = [p.as_dict() for p in chosen.keep]
        print_table(kept, PLAN_COLUMNS, "Kept: events whose delivery is not final")
        info(
            f"{sum(p.not_final for p in chosen.keep)} event(s) not final stay in PostgreSQL "
            "with their partition (never published, or not yet past "
            "FINTEGRATE_EVENT_DELIVERY_EXPIRY_DAYS); `fintegrate events resend|redeliver` "
            "finishes them"
        )
