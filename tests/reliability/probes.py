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

from sqlalchemy import Engine, text

FIGURES_ENV = "FINTEGRATE_RELIABILITY_FIGURES"


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
