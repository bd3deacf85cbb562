"""Turn any exception into one line on stderr and a documented exit code."""

from __future__ import annotations

import traceback
from typing import Any

import typer
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError, ProgrammingError
from typer import TyperException
from typer._click.core import Context as ClickContext

from fintegrate_cli._errors import EXIT_ERROR, CliError
from fintegrate_cli._output import err_console
from service.kit.errors import first_line


def describe(exc: BaseException) -> tuple[str, int]:
    """One line saying what failed and what to do, and the exit code."""
    if isinstance(exc, CliError):
        return exc.message, exc.exit_code
    if isinstance(exc, OperationalError):
        reason = first_line(exc.orig) if exc.orig else "connection failed"
        return (
            f"database unreachable: {reason}; start PostgreSQL (scripts/prepare_services.sh) "
            "or check FINTEGRATE_DATABASE_URL",
            EXIT_ERROR,
        )
    if isinstance(exc, ProgrammingError):
        reason = first_line(exc.orig) if exc.orig else str(exc)
        return f"database error: {reason}; run `fintegrate migrate apply`", EXIT_ERROR
    if isinstance(exc, ValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        return f"invalid configuration: {problems}", EXIT_ERROR
    broker = broker_failure(exc)
    if broker:
        return broker, EXIT_ERROR
    return f"unexpected error: {type(exc).__name__}: {exc} (rerun with --debug)", EXIT_ERROR


def broker_failure(exc: BaseException) -> str | None:
    """A one-line description when ``exc`` comes from pika, else None."""
    module = type(exc).__module__ or ""
    if not module.startswith("pika"):
        return None
    return (
        f"RabbitMQ unreachable or refused the operation ({type(exc).__name__}: {exc}); "
        "start it (scripts/prepare_services.sh) or check FINTEGRATE_RABBITMQ_URL"
    )


class ReportingGroup(typer.core.TyperGroup):
    """The root group: every failure below it becomes one line and an exit code."""

    def invoke(self, ctx: ClickContext) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperException):
            raise
        except Exception as exc:
            debug = bool(getattr(ctx.obj, "debug", False))
            if debug:
                err_console.print(traceback.format_exc(), markup=False, highlight=False)
            message, code = describe(exc)
            err_console.print(f"Error: {message}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(code) from None
