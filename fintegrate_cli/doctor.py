"""fintegrate doctor: check every dependency and report what to fix."""

from __future__ import annotations

import typer
from rich.table import Table
from rich.text import Text

from fintegrate_cli import _doctor_checks as checks
from fintegrate_cli import _doctor_cluster as cluster
from fintegrate_cli._context import state
from fintegrate_cli._doctor_checks import FAIL, OK, WARN, Check, timed
from fintegrate_cli._errors import CheckFailed, CliError
from fintegrate_cli._output import JsonOption, console, print_json, wants_json
from service.config import Settings
from service.kit.db import create_db_engine

STATUS_STYLE = {OK: "green", WARN: "yellow", FAIL: "bold red"}


def database_checks(settings: Settings) -> tuple[list[Check], list[str] | None]:
    """Database, migrations and outbox checks, and the consumer names (None if unknown)."""
    engine = create_db_engine(settings, pool_size=1)
    try:
        database = timed("database", lambda: checks.check_database(engine), checks.DATABASE_HINT)
        if database.status != OK:
            return [database], None
        found = [
            database,
            timed(
                "migrations", lambda: checks.check_migrations(engine), "fintegrate migrate apply"
            ),
            timed("outbox", lambda: checks.check_outbox(engine), "fintegrate migrate status"),
            timed("delivery", lambda: checks.check_delivery(engine), "fintegrate migrate status"),
            timed(
                "relays",
                lambda: checks.check_relays(engine, settings),
                "fintegrate migrate status",
            ),
            timed("history", lambda: checks.check_history(engine), "fintegrate migrate status"),
        ]
        try:
            return found, checks.consumer_names(engine)
        except Exception:
            return found, None
    finally:
        engine.dispose()


def broker_checks(settings: Settings, names: list[str] | None) -> list[Check]:
    """Broker reachable; with known consumers, their topology and DLQ depth."""
    try:
        with checks.broker_channel(settings) as open_channel:
            broker = timed(
                "rabbitmq",
                lambda: checks.check_broker(settings, open_channel),
                checks.EXCHANGE_HINT,
            )
            nodes = cluster.cluster_checks(settings) if cluster.wanted(settings) else []
            if broker.status != OK or names is None:
                return [broker, *nodes]
            return [broker, *nodes, *checks.check_queues(settings, names, open_channel)]
    except Exception as exc:
        found = [Check("rabbitmq", FAIL, checks.failure_reason(exc), checks.BROKER_HINT)]
        return found + (cluster.cluster_checks(settings) if cluster.wanted(settings) else [])


def run_checks(settings: Settings) -> list[Check]:
    """Every check, in the order an operator would fix things."""
    found, names = database_checks(settings)
    found += broker_checks(settings, names)
    found.append(timed("redis", lambda: checks.check_redis(settings), "check FINTEGRATE_REDIS_URL"))
    found.append(timed("api", lambda: checks.check_api(settings), checks.API_HINT))
    found.append(timed("gateway", lambda: checks.check_gateway(settings), checks.GATEWAY_HINT))
    return found


def print_report(found: list[Check]) -> None:
    table = Table(title="fintegrate doctor")
    for column in ("check", "status", "detail", "hint"):
        table.add_column(column, overflow="fold")
    for check in found:
        status = Text(check.status, style=STATUS_STYLE[check.status])
        table.add_row(check.name, status, Text(check.detail), Text(check.hint or "-"))
    console.print(table)


def verdict(found: list[Check]) -> None:
    """Exit 1 when a check failed, 3 when one warned; return normally when all are ok."""
    failed = [c.name for c in found if c.status == FAIL]
    warned = [c.name for c in found if c.status == WARN]
    if failed:
        raise CliError(f"doctor: {len(failed)} check(s) failed: {', '.join(failed)}")
    if warned:
        raise CheckFailed(f"doctor: {len(warned)} warning(s): {', '.join(warned)}")


def doctor_command(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """Check every dependency and say what to fix; exit 0 healthy, 3 warnings, 1 failures.

    Checks: database, migrations, outbox backlog, delivery p99, relays, history (what an
    interrupted archive left; whether `fintegrate maintain` runs), RabbitMQ, each broker
    node, cluster membership and quorum members online (with several nodes or quorum
    queues), tenant topology, dead letters, Redis (a warning only), the API (/health,
    /ready) and the gateway in front of it (with FINTEGRATE_GATEWAY_DASHBOARD_PORT: how many
    instances it sees up). Each is bounded by short timeouts.
    """
    found = run_checks(state(ctx).settings())
    if wants_json(ctx, json_output):
        print_json([check.as_dict() for check in found])
    else:
        print_report(found)
    verdict(found)


def register(app: typer.Typer) -> None:
    """Attach this module's commands to the root app."""
    app.command("doctor")(doctor_command)
