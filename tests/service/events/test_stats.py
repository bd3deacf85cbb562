"""Maintained event counts: equal to a GROUP BY over the table through inserts and updates."""

from __future__ import annotations

from sqlalchemy import Engine, text

from service.events import stats
from tests.support.history import CONSUMER, days_ago, db_now, load_events

GROUP_BY = text(
    "SELECT event_type, publish_status, deliver_status, count(*) FROM customer_events "
    "WHERE consumer_id = :consumer GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
)


def test_counts_follow_inserts_and_status_changes(history_engine: Engine) -> None:
    with history_engine.begin() as connection:
        load_events(
            connection, days_ago(connection, 20), db_now(connection), 900, "pending", "pending"
        )
    with history_engine.begin() as connection:  # the relay publishes a batch, deliveries come in
        connection.execute(
            text(
                "UPDATE customer_events SET publish_status = 'published', published_at = now() "
                "WHERE event_id IN (SELECT event_id FROM customer_events LIMIT 600)"
            )
        )
        connection.execute(
            text(
                "UPDATE customer_events SET deliver_status = 'delivered', delivered_at = now() "
                "WHERE event_id IN (SELECT event_id FROM customer_events "
                "WHERE publish_status = 'published' LIMIT 400)"
            )
        )
        connection.execute(
            text(  # bookkeeping that does not change a status
                "UPDATE customer_events SET publish_try_count = publish_try_count + 1"
            )
        )
    with history_engine.begin() as connection:
        uncompacted = [tuple(r) for r in stats.event_counts(connection, CONSUMER)]
        assert stats.compact_counts(connection) > 0
        compacted = [tuple(r) for r in stats.event_counts(connection, CONSUMER)]
        expected = [tuple(r) for r in connection.execute(GROUP_BY, {"consumer": CONSUMER})]
        rows = connection.execute(text("SELECT count(*) FROM customer_event_counts")).scalar()
    assert uncompacted == compacted == expected
    assert [row[1:3] for row in expected] == [
        ("pending", "pending"),
        ("published", "delivered"),
        ("published", "pending"),
    ]
    assert rows == 3  # one row per group after compaction


def test_stats_read_no_event_rows(history_engine: Engine) -> None:
    """The stats query plans over the counts table only, whatever customer_events holds."""
    with history_engine.begin() as connection:
        plan = "\n".join(
            connection.execute(
                text("EXPLAIN " + str(stats.EVENT_COUNTS)), {"consumer_id": None}
            ).scalars()
        )
    assert "customer_event_counts" in plan and "customer_events_p" not in plan
