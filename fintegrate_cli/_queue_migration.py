"""`fintegrate queues provision --migrate`: plan, confirm, move with progress, report."""

from __future__ import annotations

from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from fintegrate_cli._errors import EXIT_PARTIAL, CliError
from fintegrate_cli._output import confirm, emit_rows, err_console, info
from service.config import Settings
from service.messaging.operate.migration import MigrationBlocked, MigrationStopped, migrate_tenant
from service.messaging.operate.migration_plan import QueueMigration, plan_migration

MIGRATION_COLUMNS = ("consumer_name", "queue", "result", "differs", "moved")


def migration_row(plan: QueueMigration) -> dict[str, Any]:
    """One queue's plan or outcome: the JSON object, with a readable ``differs`` for tables."""
    row = plan.as_dict()
    row["differs"] = "; ".join(
        f"{item.argument}: {item.live!r} -> {item.expected!r}" for item in plan.drift
    )
    return row


def migrate_queues(
    settings: Settings, names: list[str], dry_run: bool, yes: bool, as_json: bool, quiet: bool
) -> None:
    """Plan every tenant's migration; unless ``dry_run``, confirm and carry it out."""
    plans = [plan for name in names for plan in plan_migration(settings, name)]
    pending = [plan for plan in plans if plan.needed]
    for plan in pending:
        for step in plan.steps():
            info(f"{plan.consumer_name}: {step}", quiet)
    if dry_run or not pending:
        title = "Migration plan (dry run)" if dry_run else "Nothing to migrate"
        emit_rows([migration_row(plan) for plan in plans], MIGRATION_COLUMNS, as_json, title)
        return
    tenants = sorted({plan.consumer_name for plan in pending})
    confirm(
        f"Migrate {len(pending)} queue(s) of {len(tenants)} tenant(s)? Their workers must be "
        "stopped; new events wait in the outbox until each queue is back.",
        yes,
    )
    done, errors = run_with_progress(settings, tenants, pending, quiet)
    untouched = [plan for plan in plans if plan.consumer_name not in tenants]
    rows = [migration_row(plan) for plan in done + untouched]
    emit_rows(rows, MIGRATION_COLUMNS, as_json, "Migrated queues")
    for line in errors:
        err_console.print(line, markup=False, highlight=False, soft_wrap=True)
    if errors:
        raise CliError(
            f"{len(errors)} tenant(s) not fully migrated (see above); run the same command "
            "again to continue where it stopped",
            EXIT_PARTIAL if done else 1,
        )


def run_with_progress(
    settings: Settings, tenants: list[str], pending: list[QueueMigration], quiet: bool
) -> tuple[list[QueueMigration], list[str]]:
    """Migrate tenant by tenant; the outcomes, and one line per tenant that stopped."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    done: list[QueueMigration] = []
    errors: list[str] = []
    with Progress(*columns, console=err_console, disable=quiet) as progress:
        tasks = {
            plan.target.queue: progress.add_task(f"moving {plan.target.queue}", total=_moves(plan))
            for plan in pending
        }

        def advance(queue: str, moved: int) -> None:
            if queue in tasks:
                progress.update(tasks[queue], completed=moved)

        for name in tenants:
            try:
                done += migrate_tenant(settings, name, advance)
            except (MigrationBlocked, MigrationStopped) as exc:
                errors.append(f"{name}: {exc}")
    return done, errors


def _moves(plan: QueueMigration) -> int:
    """Messages a run will move: the old queue's twice (out and back), the rest once."""
    return 2 * plan.ready * bool(plan.drift) + (plan.stashed or 0) + (plan.inbox or 0)
