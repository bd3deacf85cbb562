"""The reads that must not grow with history walk small partial indexes (EXPLAIN)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, text

from service.delivery import repository as delivery
from service.delivery.schemas import Selection
from service.events import repository as events
from tests.support.history import CONSUMER, days_ago, db_now, load_events, sizable_partitions

# Index names PostgreSQL gives each partition's copy of the parent's partial indexes.
UNDELIVERED = re.compile(r"_consumer_id_created_at_idx\b")
PENDING = re.compile(
    r"_consumer_id_next_attempt_at_\w*idx\b|_coalesce_sequence_next_attempt_at_idx\b"
)


@pytest.fixture
def history(history_engine: Engine) -> Engine:
    """20,000 delivered events, 60 failed deliveries, 60 pending events; analyzed."""
    with history_engine.begin() as connection:
        load_events(connection, days_ago(connection, 30), db_now(connection), 20_000)
        load_events(
            connection, days_ago(connection, 6), db_now(connection), 60, "published", "failed"
        )
        load_events(
            connection, days_ago(connection, 6), db_now(connection), 60, "pending", "pending"
        )
        connection.execute(text("ANALYZE customer_events"))
    return history_engine


def plan_of(connection: Connection, statement: Any, params: dict[str, Any]) -> str:
    sql = statement.text if hasattr(statement, "text") else str(statement)
    rows = connection.execute(text("EXPLAIN " + sql), params).scalars()
    return "\n".join(rows)


def list_params(**filters: Any) -> dict[str, Any]:
    base = {
        "customer_id": None,
        "event_type": None,
        "publish_status": None,
        "deliver_status": None,
        "since": None,
        "after_at": None,
        "after_id": None,
    }
    return {**base, **filters, "consumer_id": CONSUMER, "limit": 51}


@pytest.mark.parametrize(
    ("filters", "index"),
    [
        ({"deliver_status": "failed", "publish_status": "published"}, UNDELIVERED),
        ({"publish_status": "pending"}, PENDING),
    ],
)
def test_get_events_status_filters_use_partial_indexes(
    history: Engine, filters: dict[str, str], index: re.Pattern[str]
) -> None:
    with history.connect() as connection:
        plan = plan_of(connection, events.LIST_EVENTS, list_params(**filters))
        filled = sizable_partitions(connection)
    assert index.search(plan), plan
    assert not set(re.findall(r"Seq Scan on (\S+)", plan)) & filled, plan


def test_redeliver_selection_uses_the_undelivered_index(history: Engine) -> None:
    selection = Selection(period_in_days=7, max_try_count=5, event_types=(), consumer_id=CONSUMER)
    with history.connect() as connection:
        plan = plan_of(
            connection,
            delivery._sql(delivery.COUNT_GROUPS, "redeliver"),
            delivery._params(selection),
        )
        filled = sizable_partitions(connection)
    assert UNDELIVERED.search(plan), plan
    assert not set(re.findall(r"Seq Scan on (\S+)", plan)) & filled, plan
