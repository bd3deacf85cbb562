"""Database errors as they may be logged: no row contents, no bound parameters.

A PostgreSQL error carries the failing data in its DETAIL ("Failing row contains (…)",
"Key (email)=(…) already exists"), and a data exception quotes the bad input in its
message; SQLAlchemy appends the SQL and, unless ``hide_parameters`` (which
``create_db_engine`` sets), the parameters. A customer's name or e-mail would reach the
log that way. ``describe`` keeps what an operator needs: the error type, its SQLSTATE and
the first line of the message (not even that for data exceptions, class 22).
"""

from __future__ import annotations

import logging
import traceback

import asyncpg
from sqlalchemy.exc import DBAPIError

DATA_EXCEPTION_CLASS = "22"


def is_database_error(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError | asyncpg.PostgresError | asyncpg.InterfaceError)


def describe(exc: BaseException) -> str:
    """``Type [SQLSTATE]: first line`` of a database error, without data; ``str`` otherwise."""
    if not is_database_error(exc):
        return str(exc)
    original = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    state = getattr(original, "sqlstate", None) or getattr(original, "pgcode", None)
    kind = type(original).__name__
    if isinstance(state, str) and state.startswith(DATA_EXCEPTION_CLASS):
        return f"{kind} [{state}]"
    lines = str(original).strip().splitlines() or [""]
    first = lines[0].split("[SQL:", 1)[0].strip()
    return f"{kind} [{state}]: {first}" if state else f"{kind}: {first}"


def safe_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` with the database error's message replaced by ``describe``."""
    frames = "".join(traceback.format_tb(exc.__traceback__))
    return f"Traceback (most recent call last):\n{frames}{describe(exc)}"


class DatabaseErrorFilter(logging.Filter):
    """On a handler: a logged database exception prints as ``safe_traceback``, so a
    ``log.exception`` anywhere in a worker process cannot print a failing row."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and is_database_error(exc):
            record.exc_text = safe_traceback(exc)
        return True
