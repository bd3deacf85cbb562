"""Read-only probes of the outbox and receipts, and the figures the tests report.

``report_figures`` prints one ``RELIABILITY {json}`` line (visible with ``-s`` or ``-rA``)
and, when ``FINTEGRATE_RELIABILITY_FIGURES`` names a file, appends the JSON there too;
docs/RELIABILITY.md quotes these lines.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

import httpx
from sqlalchemy import Engine, text

from tests.support.api import assert_envelope

FIGURES_ENV = "FINTEGRATE_RELIABILITY_FIGURES"
# What a 503 answer must never show: internals of the database layer or its secrets.
LEAKS = (
    "Traceback",
    "asyncpg",
    "psycopg2",
    "sqlalchemy",
    "SQLSTATE",
    "SELECT",
    "INSERT",
    "fintegrate_pass",
)


def assert_unavailable(response: httpx.Response) -> None:
    """A clean 503 envelope: retry advice, nothing internal leaked."""
    assert_envelope(response, 503)
    assert response.headers["retry-after"].isdigit()
    assert not [leak for leak in LEAKS if leak in response.text], response.text


def customers_without_event(engine: Engine, consumer_id: str) -> tuple[int, int]:
    """(customers of the tenant, those of them lacking exactly one creation event)."""
    with engine.connect() as connection:
        row = connection.execute(
            text(
                "SELECT count(*) AS customers, count(*) FILTER (WHERE (SELECT count(*)"
                " FROM customer_events e WHERE e.customer_id = c.customer_id"
                " AND e.event_type = 'customer_creation') <> 1) AS orphans"
                " FROM customers c WHERE c.consumer_id = :id"
            ),
            {"id": consumer_id},
        ).one()
    return row.customers, row.orphans


def publish_states(engine: Engine, consumer_id: str) -> dict[str, int]:
    """``{publish_status: count}`` of the tenant's events."""
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT publish_status, count(*) AS n FROM customer_events"
                " WHERE consumer_id = :id GROUP BY publish_status"
            ),
            {"id": consumer_id},
        )
        return {row.publish_status: row.n for row in rows}


def event_ids(engine: Engine, consumer_id: str) -> set[str]:
    """Every event id of the tenant."""
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT event_id FROM customer_events WHERE consumer_id = :id"),
            {"id": consumer_id},
        )
        return {str(row.event_id) for row in rows}


def deliver_states(engine: Engine, consumer_id: str) -> dict[str, int]:
    """``{deliver_status: count}`` of the tenant's events."""
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT deliver_status, count(*) AS n FROM customer_events"
                " WHERE consumer_id = :id GROUP BY deliver_status"
            ),
            {"id": consumer_id},
        )
        return {row.deliver_status: row.n for row in rows}


def receipts(engine: Engine, consumer_id: str) -> Counter[tuple[str, str]]:
    """How many receipts exist per ``(event_id, status)``."""
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT event_id, status FROM consumer_event_receipts WHERE consumer_id = :id"),
            {"id": consumer_id},
        )
        return Counter((str(row.event_id), row.status) for row in rows)


def report_figures(test: str, **figures: Any) -> None:
    """Print the measured figures of ``test`` and append them to the figures file if set."""
    line = json.dumps({"test": test, **figures}, sort_keys=True, default=str)
    print(f"RELIABILITY {line}")
    path = os.environ.get(FIGURES_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as figures_file:
            figures_file.write(line + "\n")
