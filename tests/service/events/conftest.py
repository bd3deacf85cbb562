"""Fixtures of the history tests: each test owns a freshly migrated database (they drop and
create partitions), and a loader of past events straight into PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import Connection, Engine, create_engine, text

from service import migrations

CONSUMER = uuid.UUID("00000000-0000-0000-0000-0000000000c1")
# Weekly partitions reaching back this many weeks before the current one.
WEEKS_BACK = 6

CREATE_PAST_PARTITIONS = text(
    """
    SELECT fintegrate_create_event_partition(
        date_bin('7 days', now(), '2000-01-03'::timestamptz) - interval '7 days' * (g + 1),
        date_bin('7 days', now(), '2000-01-03'::timestamptz) - interval '7 days' * g)
    FROM generate_series(0, :weeks - 1) g
    """
)
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


@pytest.fixture
def history_engine(database_factory: Callable[[], str]) -> Iterator[Engine]:
    """A fresh database with every migration and weekly partitions WEEKS_BACK weeks back."""
    engine = create_engine(database_factory())
    migrations.apply(engine)
    with engine.begin() as connection:
        connection.execute(CREATE_PAST_PARTITIONS, {"weeks": WEEKS_BACK})
    yield engine
    engine.dispose()


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
