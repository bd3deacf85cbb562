"""The history benchmark's data: partitions, a bulk-loaded past, recent failures, backlogs.

Written straight into the tables (docs/ARCHITECTURE.md, "Tables and their owners"): ten
million events of history are loaded with ``INSERT ... SELECT generate_series`` chunk by
chunk, every trigger on but the per-row sequence one (the load numbers events itself and
sets the counters after).
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine, create_engine, text

from service.bench.figures import Progress

CHUNK = 500_000
CUSTOMERS = 100_000
NO_TIMEOUT = text("SET LOCAL statement_timeout = 0")
PAST_PARTITIONS = text(
    """
    SELECT fintegrate_create_event_partition(
        date_bin('7 days', now(), '2000-01-03'::timestamptz) - interval '7 days' * (g + 1),
        date_bin('7 days', now(), '2000-01-03'::timestamptz) - interval '7 days' * g)
    FROM generate_series(0, :weeks - 1) g
    """
)
# History as production leaves it: 99.9% delivered, 0.1% delivery failed (older than the
# redeliver window: the recent failures are RECENT_FAILURES, the same in both setups); a
# stable pool of customers (one sequence counter each); payloads the size of a
# customer_creation event.
LOAD = text(
    """
    INSERT INTO customer_events
        (consumer_id, customer_id, event_type, source_service, payload_json, metadata_json,
         created_at, publish_status, published_at, publish_try_count, deliver_status,
         delivered_at, deliver_try_count, sequence)
    SELECT CAST(:consumer AS uuid), c.customer_id, 'customer_creation', 'POST /customer/data',
           jsonb_build_object('customer_id', c.customer_id, 'name', 'Customer ' || g,
                              'email', 'c' || g || '@example.com', 'status', 'active'),
           jsonb_build_object('request_id', md5(g::text)),
           t.at, 'published', t.at, 1,
           CASE WHEN g % 1000 = 0 AND t.at < now() - interval '8 days' THEN 'failed'
                ELSE 'delivered' END, t.at, 1,
           g / :customers + 1
    FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) g
    CROSS JOIN LATERAL (SELECT now() - make_interval(days => :days)
                               + make_interval(secs => :seconds * g / :total) AS at) t
    CROSS JOIN LATERAL (SELECT md5(:consumer || (g % :customers))::uuid AS customer_id) c
    """
)
SEQUENCE_TRIGGER_OFF = text(
    "ALTER TABLE customer_events DISABLE TRIGGER trg_customer_events_sequence"
)
SEQUENCE_TRIGGER_ON = text(
    "ALTER TABLE customer_events ENABLE TRIGGER trg_customer_events_sequence"
)
SEQUENCE_COUNTERS = text(
    """
    INSERT INTO event_sequences (consumer_id, aggregate_id, last_sequence)
    SELECT consumer_id, coalesce(customer_id, consumer_id), max(sequence)
    FROM customer_events GROUP BY 1, 2
    ON CONFLICT (aggregate_id, consumer_id) DO UPDATE
        SET last_sequence = GREATEST(event_sequences.last_sequence, EXCLUDED.last_sequence)
    """
)
# What the tenant's redeliver dry-run (7 days) selects, in both setups alike: 2,000 failed
# deliveries of the last 6 days. Its cost follows its selection; with the history's own
# failures in the window the two setups would compare different selections.
RECENT_FAILURES = text(
    """
    INSERT INTO customer_events (customer_id, consumer_id, event_type, source_service,
                                 payload_json, metadata_json, created_at, publish_status,
                                 published_at, publish_try_count, deliver_status,
                                 deliver_try_count)
    SELECT gen_random_uuid(), CAST(:consumer AS uuid), 'customer_creation', 'bench',
           jsonb_build_object('name', 'Failed ' || n), '{}'::jsonb,
           now() - make_interval(secs => n * 250), 'published',
           now() - make_interval(secs => n * 250), 1, 'failed', 1
    FROM generate_series(1, 2000) n
    """
)
FRESH_BACKLOG = text(
    """
    INSERT INTO customer_events (customer_id, consumer_id, event_type, source_service,
                                 payload_json, metadata_json)
    SELECT gen_random_uuid(), CAST(:consumer AS uuid), 'customer_creation', 'bench',
           jsonb_build_object('name', 'Backlog ' || n), '{}'::jsonb
    FROM generate_series(1, :count) n
    """
)
# The tenant's worker confirms what the relay published: the next round starts equal.
DELIVERED = text(
    "UPDATE customer_events SET deliver_status = 'delivered', delivered_at = now() "
    "WHERE publish_status = 'published' AND deliver_status = 'pending'"
)
PENDING = text("SELECT count(*) FROM customer_events WHERE publish_status = 'pending'")
CONSUMER_NAME = text("SELECT name FROM consumers WHERE consumer_id = :c")
TABLE_BYTES = text(
    "SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0) FROM pg_inherits "
    "WHERE inhparent = 'customer_events'::regclass"
)


def prepare(engine: Engine, consumer_id: str, days: int) -> None:
    """The same partitions and recent failures in both setups, empty or loaded."""
    with engine.begin() as connection:
        connection.execute(PAST_PARTITIONS, {"weeks": days // 7 + 2})
        connection.execute(RECENT_FAILURES, {"consumer": consumer_id})


def bulk_load(engine: Engine, consumer_id: str, events: int, days: int, progress: Progress) -> None:
    """Loads ``events`` of history over ``days`` chunk by chunk, then vacuums."""
    with engine.begin() as connection:
        connection.execute(SEQUENCE_TRIGGER_OFF)
    for first in range(0, events, CHUNK):
        last = min(first + CHUNK, events) - 1
        params = {
            "consumer": consumer_id, "first": first, "last": last, "total": events,
            "days": days, "seconds": days * 86_400 - 3_600, "customers": CUSTOMERS,
        }  # fmt: skip
        with engine.begin() as connection:
            connection.execute(NO_TIMEOUT)
            connection.execute(LOAD, params)
        progress(f"loaded {last + 1:,} / {events:,}")
    with engine.begin() as connection:
        connection.execute(NO_TIMEOUT)
        connection.execute(SEQUENCE_TRIGGER_ON)
        connection.execute(SEQUENCE_COUNTERS)
    vacuum_analyze(engine.url.render_as_string(hide_password=False))


def add_backlog(engine: Engine, consumer_id: str, count: int) -> None:
    with engine.begin() as connection:
        connection.execute(NO_TIMEOUT)
        connection.execute(FRESH_BACKLOG, {"consumer": consumer_id, "count": count})


def confirm_delivered(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(NO_TIMEOUT)
        connection.execute(DELIVERED)


def pending(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(PENDING).scalar_one())


def consumer_name(engine: Engine, consumer_id: str) -> str:
    with engine.connect() as connection:
        return str(connection.execute(CONSUMER_NAME, {"c": consumer_id}).scalar_one())


def table_bytes(engine: Engine) -> int:
    """Bytes of every partition of ``customer_events``, indexes and TOAST included."""
    with engine.connect() as connection:
        return int(connection.execute(TABLE_BYTES).scalar_one())


def vacuum_analyze(database_url: str) -> None:
    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text("SET statement_timeout = 0"))
        connection.execute(text("VACUUM ANALYZE customer_events"))
    engine.dispose()


def dirty_mb() -> float:
    """The kernel's dirty page cache (``Dirty`` in /proc/meminfo), in MB; 0 where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("Dirty:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def settle_write_back(progress: Progress) -> None:
    """Waits until the bulk load's gigabytes have reached the disk.

    Loading and vacuuming millions of events leaves GBs of dirty pages that the kernel
    writes back over the next minutes; every commit's WAL fsync queues behind them
    meanwhile. A table that grew over weeks has no such write-back pending, so the rounds
    start once it is done.
    """
    before = dirty_mb()
    os.sync()
    progress(f"write-back: {before:,.0f} MB dirty, synced")
