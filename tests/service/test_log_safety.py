"""Database errors as the service logs them: no row contents, no bound parameters."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from service.config import Settings
from service.kit.db import create_db_engine
from service.kit.log_safety import DatabaseErrorFilter, describe, safe_traceback

SECRET = "ada.secret@example.com"


@pytest.fixture
def product_engine(settings: Settings) -> Iterator[Engine]:
    """An engine as the service builds it (``hide_parameters``)."""
    engine = create_db_engine(settings.database, pool_size=1)
    yield engine
    engine.dispose()


def failing(engine: Engine, sql: str) -> DBAPIError:
    with engine.connect() as connection, pytest.raises(DBAPIError) as caught:
        connection.execute(text(sql), {"value": SECRET})
    return caught.value


def test_a_failing_row_is_never_described(product_engine: Engine) -> None:
    exc = failing(
        product_engine,
        "CREATE TEMP TABLE t (v text CHECK (v = 'x')); INSERT INTO t VALUES (:value)",
    )
    assert SECRET in str(exc.orig), "PostgreSQL does quote the row in its DETAIL"
    assert "parameters hidden" in str(exc), "hide_parameters keeps the bound values out"
    assert SECRET not in describe(exc) and SECRET not in safe_traceback(exc)
    assert describe(exc).startswith("CheckViolation [23514]: new row for relation")


def test_a_data_exception_keeps_only_its_sqlstate(product_engine: Engine) -> None:
    exc = failing(product_engine, "SELECT CAST(:value AS uuid)")
    assert SECRET in str(exc.orig)
    assert describe(exc) == "InvalidTextRepresentation [22P02]"


def test_a_logged_database_traceback_holds_no_row(product_engine: Engine) -> None:
    exc = failing(
        product_engine,
        "CREATE TEMP TABLE t (v text CHECK (v = 'x')); INSERT INTO t VALUES (:value)",
    )
    handler = logging.StreamHandler(io.StringIO())
    handler.addFilter(DatabaseErrorFilter())
    logger = logging.getLogger("test_log_safety")
    logger.addHandler(handler)
    try:
        try:
            raise exc
        except DBAPIError:
            logger.exception("cycle failed")
    finally:
        logger.removeHandler(handler)
    text_written = handler.stream.getvalue()
    assert "cycle failed" in text_written and "CheckViolation [23514]" in text_written
    assert SECRET not in text_written
