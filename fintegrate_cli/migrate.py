"""`fintegrate migrate`: apply, status, verify and create plain-SQL migrations."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from sqlalchemy import Engine

from fintegrate_cli._context import state
from fintegrate_cli._errors import CheckFailed, CliError
from fintegrate_cli._output import JsonOption, emit_rows, info, print_json, wants_json
from service.kit.db import create_db_engine
from service.migrations import runner as migrations

app = typer.Typer(
    help="Apply, inspect, verify and create database migrations.", no_args_is_help=True
)

DirOption = Annotated[
    Path,
    typer.Option("--dir", help="Directory holding the migration files.", file_okay=False),
]
T = TypeVar("T")
STATUS_COLUMNS = ("filename", "state", "applied_at")  # the filename starts with the version


def engine_for(ctx: typer.Context) -> Engine:
    """An engine for this command, disposed when the command ends."""
    engine = create_db_engine(state(ctx).settings().database, pool_size=2)
    ctx.call_on_close(engine.dispose)
    return engine


def run_checked(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call a runner function, turning MigrationError into a one-line CLI error."""
    try:
        return call(*args, **kwargs)
    except migrations.MigrationError as exc:
        raise CliError(str(exc)) from exc


@app.command("apply")
def apply_command(
    ctx: typer.Context,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; change nothing.")
    ] = False,
    to: Annotated[str | None, typer.Option("--to", help="Apply up to this version.")] = None,
    lock_timeout: Annotated[
        float, typer.Option("--lock-timeout", help="Seconds to wait for the migration lock.")
    ] = 30.0,
    wait: Annotated[
        float,
        typer.Option("--wait", help="Seconds to wait for the database to accept connections."),
    ] = 0.0,
    directory: DirOption = migrations.MIGRATIONS_DIR,
    json_output: JsonOption = False,
) -> None:
    """Apply pending migrations in name order, each in its own transaction."""
    cli = state(ctx)
    engine = engine_for(ctx)
    if wait > 0:
        run_checked(migrations.wait_for_database, engine, wait)
    if dry_run:
        pending = run_checked(migrations.plan, engine, directory, to)
        plan_rows = [
            {"version": f.version, "filename": f.filename, "action": "apply"} for f in pending
        ]
        emit_rows(
            plan_rows,
            ("filename", "action"),
            wants_json(ctx, json_output),
            "Plan (dry run)",
        )
        info(f"{len(plan_rows)} migration(s) would be applied; nothing changed", cli.quiet)
        return
    applied = run_checked(
        migrations.apply, engine, directory, to_version=to, lock_timeout_seconds=lock_timeout
    )
    rows: list[dict[str, Any]] = [
        {"version": m.version, "filename": m.filename, "execution_ms": m.execution_ms}
        for m in applied
    ]
    if wants_json(ctx, json_output):
        print_json({"applied": rows})
    else:
        for row in rows:
            info(f"applied {row['filename']} in {row['execution_ms']} ms", cli.quiet)
        info(f"{len(rows)} migration(s) applied; database is up to date", cli.quiet)
    warn_about_drift(engine, directory, cli.quiet)


def warn_about_drift(engine: Engine, directory: Path, quiet: bool) -> None:
    """Apply never re-runs an applied file; say so when one changed or went missing."""
    problems = run_checked(migrations.verify, engine, directory)
    if problems:
        names = ", ".join(f"{p.filename} ({p.state})" for p in problems)
        info(
            f"warning: applied migrations differ from their files: {names}; "
            "run `fintegrate migrate verify`",
            quiet,
        )


@app.command("status")
def status_command(
    ctx: typer.Context,
    directory: DirOption = migrations.MIGRATIONS_DIR,
    json_output: JsonOption = False,
    exit_code: Annotated[
        bool,
        typer.Option("--exit-code", help="Exit 3 when anything is pending, changed or missing."),
    ] = False,
) -> None:
    """Show applied / pending / changed / missing for each migration."""
    states = run_checked(migrations.status, engine_for(ctx), directory)
    rows = [s.as_dict() | {"applied_at": short_time(s.applied_at)} for s in states]
    emit_rows(
        rows,
        STATUS_COLUMNS,
        wants_json(ctx, json_output),
        "Migrations",
        json_data=[s.as_dict() for s in states],
    )
    outstanding = [s for s in states if s.state != "applied"]
    if exit_code and outstanding:
        raise CheckFailed(
            f"{len(outstanding)} migration(s) not applied cleanly: "
            + ", ".join(f"{s.filename} ({s.state})" for s in outstanding)
        )


def short_time(moment: datetime | None) -> str | None:
    """A table-friendly UTC timestamp (JSON keeps the full ISO form)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else None


@app.command("verify")
def verify_command(
    ctx: typer.Context,
    directory: DirOption = migrations.MIGRATIONS_DIR,
    json_output: JsonOption = False,
) -> None:
    """Detect applied files changed since (checksum drift) and recorded files now gone."""
    cli = state(ctx)
    problems = run_checked(migrations.verify, engine_for(ctx), directory)
    if wants_json(ctx, json_output):
        print_json({"ok": not problems, "problems": [p.as_dict() for p in problems]})
    if problems:
        raise CliError(
            "migration drift: "
            + ", ".join(f"{p.filename} ({p.state})" for p in problems)
            + "; restore the original files or add a new migration instead of editing one"
        )
    info("all applied migrations match their files", cli.quiet)


@app.command("new")
def new_command(
    ctx: typer.Context,
    description: Annotated[str, typer.Argument(help="What the migration does, in a few words.")],
    directory: DirOption = migrations.MIGRATIONS_DIR,
) -> None:
    """Write a new, correctly named migration file from the template."""
    path = run_checked(migrations.new_migration, description, directory)
    if state(ctx).json:
        print_json({"path": str(path)})
    else:
        typer.echo(str(path))
