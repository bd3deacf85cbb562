"""History test data: a freshly migrated database with past partitions, and loaders of past
events straight into PostgreSQL (the history tests drop and create partitions)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, create_engine, text

from service.bench.history_data import PAST_PARTITIONS
from service.migrations import runner as migrations

OLD_FINAL = 6000
CONSUMER = uuid.UUID("00000000-0000-0000-0000-0000000000c1")
# Weekly partitions reaching back this many weeks before the current one.
WEEKS_BACK = 6

LOAD_EVENTS = text(
    """
    INSERT INTO customer_events
        (consumer_id, customer_id, event_type, source_service, payload_json, created_at,
         publish_status, published_at, deliver_status, delivered_at)
    SELECT CAST(:consumer AS uuid), gen_random_uuid(), 'customer_creation', 'test',
           jsonb_build_object('name', 'Customer ' || g, 'email', 'c' || g || '@example.com'),
           CAST(:start AS timestamptz) + (CAST(:end AS timestamptz) - CAST(:start AS timestamptz))
               * (g::float / :count),
           :publish_status, now(), :deliver_status, now()
    FROM generate_series(0, :count - 1) g
    """
)


def history_database(database_factory: Callable[[], str]) -> Engine:
    """A fresh database with every migration and weekly partitions WEEKS_BACK weeks back."""
    engine = create_engine(database_factory())
    migrations.apply(engine)
    with engine.begin() as connection:
        connection.execute(PAST_PARTITIONS, {"weeks": WEEKS_BACK})
    return engine


def load_events(
    connection: Connection,
    start: datetime,
    end: datetime,
    count: int,
    publish_status: str = "published",
    deliver_status: str = "delivered",
    consumer: uuid.UUID = CONSUMER,
) -> None:
    """``count`` events spread over [start, end) with the given statuses."""
    connection.execute(
        LOAD_EVENTS,
        {
            "consumer": consumer,
            "start": start,
            "end": end,
            "count": count,
            "publish_status": publish_status,
            "deliver_status": deliver_status,
        },
    )


def db_now(connection: Connection) -> datetime:
    now: datetime = connection.execute(text("SELECT now()")).scalar_one()
    return now


def days_ago(connection: Connection, days: float) -> datetime:
    return db_now(connection) - timedelta(days=days)


def load_history(engine: Engine, old_final: int = OLD_FINAL) -> None:
    """Final events 42..14 days old, one not-final event 40 days old, recent traffic."""
    with engine.begin() as connection:
        load_events(connection, days_ago(connection, 42), days_ago(connection, 14), old_final)
        load_events(
            connection,
            days_ago(connection, 42),
            days_ago(connection, 14),
            300,
            "published",
            "failed",
        )
        load_events(
            connection,
            days_ago(connection, 40),
            days_ago(connection, 39.9),
            1,
            "published",
            "pending",
        )
        load_events(
            connection, days_ago(connection, 3), db_now(connection), 500, "pending", "pending"
        )


# A partition holding fewer rows may rightly be read sequentially: the planner prefers a
# scan of a few pages to an index. The current week's partition is that small early in the
# week, so plan checks look only at partitions big enough for a scan to cost something.
SIZABLE_ROWS = 1000


def sizable_partitions(connection: Connection, minimum: int = SIZABLE_ROWS) -> set[str]:
    """Partitions of customer_events holding at least ``minimum`` rows."""
    rows = connection.execute(
        text(
            "SELECT tableoid::regclass::text FROM customer_events"
            " GROUP BY 1 HAVING count(*) >= :minimum"
        ),
        {"minimum": minimum},
    ).scalars()
    return set(rows)
