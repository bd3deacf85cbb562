"""customer_events partitioned by created_at: conversion, partitions ahead, append-only."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

from service.config import Settings, load_settings
from service.events import maintenance, partitions
from service.migrations import runner as migrations
from tests.support.history import CONSUMER, days_ago, db_now, load_events, sizable_partitions

PARTITIONING = "20261202_0700"
# Every column the rows had before the conversion; columns added by later migrations
# (traceparent, 20261207_0600, NULL on old rows) are not a change of the rows.
ROW_DIGESTS = text(
    "SELECT event_id, md5((to_jsonb(e) - 'traceparent')::text) FROM customer_events e"
)
WHERE_IS = text("SELECT tableoid::regclass::text FROM customer_events WHERE event_id = :id")
INSERT_AT = text(
    "INSERT INTO customer_events (consumer_id, event_type, source_service, created_at) "
    "VALUES (gen_random_uuid(), 'customer_creation', 'test', :at) RETURNING event_id"
)


def digests(connection: Connection) -> dict[uuid.UUID, str]:
    return {row[0]: row[1] for row in connection.execute(ROW_DIGESTS)}


def insert_at(connection: Connection, at: object) -> uuid.UUID:
    event_id: uuid.UUID = connection.execute(INSERT_AT, {"at": at}).scalar_one()
    return event_id


def partition_names(connection: Connection) -> list[str]:
    return [p.name for p in partitions.list_partitions(connection)]


@pytest.fixture
def converted_engine(database_factory: Callable[[], str], tmp_path: Path) -> Engine:
    """A database migrated up to before the partitioning, loaded, then migrated to the end."""
    engine = create_engine(database_factory())
    before = [f.version for f in migrations.discover() if f.version < PARTITIONING]
    migrations.apply(engine, to_version=before[-1])
    with engine.begin() as connection:
        load_events(connection, days_ago(connection, 90), db_now(connection), 3000)
        load_events(
            connection, days_ago(connection, 3), db_now(connection), 200, "pending", "pending"
        )
    return engine


def test_conversion_keeps_every_row_unchanged(converted_engine: Engine) -> None:
    with converted_engine.connect() as connection:
        before = digests(connection)
    migrations.apply(converted_engine)
    with converted_engine.connect() as connection:
        assert digests(connection) == before
        kind = connection.execute(
            text("SELECT relkind FROM pg_class WHERE oid = 'customer_events'::regclass")
        ).scalar_one()
        names = partition_names(connection)
    assert len(before) == 3200
    assert kind == "p"
    assert "customer_events_legacy" in names and names[-1] == partitions.DEFAULT_PARTITION
    converted_engine.dispose()


def test_append_only_rule_holds_on_every_partition(converted_engine: Engine) -> None:
    migrations.apply(converted_engine)
    with converted_engine.begin() as connection:
        horizon = max(p.range_end for p in partitions.list_partitions(connection) if p.range_end)
        insert_at(connection, horizon + timedelta(days=400))  # lands in the DEFAULT partition
        for part in partition_names(connection):
            insert_at_partition = connection.execute(
                text(f"SELECT event_id FROM {part} LIMIT 1")
            ).scalar()
            if insert_at_partition is None:
                continue
            for statement in (
                f"UPDATE {part} SET payload_json = '{{\"x\": 1}}' WHERE event_id = :id",
                f"UPDATE {part} SET created_at = created_at + interval '1 s' WHERE event_id = :id",
                f"DELETE FROM {part} WHERE event_id = :id",
                f"TRUNCATE {part}",
            ):
                savepoint = connection.begin_nested()
                with pytest.raises(DBAPIError, match="append-only"):
                    connection.execute(text(statement), {"id": insert_at_partition})
                savepoint.rollback()
    converted_engine.dispose()


def test_a_write_across_the_partition_boundary_lands_in_each_partition(
    history_engine: Engine,
) -> None:
    with history_engine.begin() as connection:
        current = next(
            p
            for p in partitions.list_partitions(connection)
            if p.range_start and p.range_end and p.range_start <= db_now(connection) < p.range_end
        )
        last_moment = insert_at(connection, current.range_end - timedelta(microseconds=1))
        first_moment = insert_at(connection, current.range_end)
        here = connection.execute(WHERE_IS, {"id": last_moment}).scalar_one()
        there = connection.execute(WHERE_IS, {"id": first_moment}).scalar_one()
    assert here == current.name
    assert there not in (current.name, partitions.DEFAULT_PARTITION)


def test_rows_of_a_missing_partition_wait_in_default_then_move_in(
    history_engine: Engine, settings: Settings
) -> None:
    """Maintenance late: the insert still succeeds; the next pass moves the row, intact."""
    with history_engine.begin() as connection:
        newest = partitions.list_partitions(connection)[-2]
        partitions.detach_and_drop(connection, newest.name)
        assert newest.range_start is not None
        event_id = insert_at(connection, newest.range_start + timedelta(hours=1))
        assert connection.execute(WHERE_IS, {"id": event_id}).scalar_one() == (
            partitions.DEFAULT_PARTITION
        )
        before = digests(connection)
    created = maintenance.ensure_partitions(
        history_engine, settings.updated({"event_partition_span_days": 7})
    )
    with history_engine.begin() as connection:
        assert created == 1
        assert connection.execute(WHERE_IS, {"id": event_id}).scalar_one() == newest.name
        assert digests(connection) == before
        insert_at(connection, newest.range_start + timedelta(days=400))
        with pytest.raises(DBAPIError, match="append-only"):  # its trigger is back
            connection.execute(text("DELETE FROM customer_events_default"))


def test_ensure_partitions_is_idempotent_and_keeps_partitions_ahead(
    history_engine: Engine, settings: Settings
) -> None:
    assert maintenance.ensure_partitions(history_engine, settings) == 0
    with history_engine.connect() as connection:
        horizon = max(p.range_end for p in partitions.list_partitions(connection) if p.range_end)
        assert horizon - db_now(connection) > timedelta(days=7 * partitions.PARTITIONS_AHEAD)


def test_event_id_lookups_use_the_primary_key_in_every_partition(history_engine: Engine) -> None:
    with history_engine.begin() as connection:
        load_events(connection, days_ago(connection, 30), db_now(connection), 20000)
        connection.execute(text("ANALYZE customer_events"))
        plan = "\n".join(
            connection.execute(
                text(
                    "EXPLAIN SELECT * FROM customer_events "
                    "WHERE event_id = :id AND consumer_id = :consumer"
                ),
                {"id": uuid.uuid4(), "consumer": CONSUMER},
            ).scalars()
        )
        filled = sizable_partitions(connection)
    scanned = set(re.findall(r"Seq Scan on (\S+)", plan))
    assert len(filled) >= 3
    assert not scanned & filled, plan  # only a nearly empty partition may be read sequentially
    assert len(re.findall(r"Index Scan using \S+_pkey", plan)) >= len(filled), plan


def test_maintenance_with_retention_archives_and_without_it_only_keeps_partitions_ahead(
    history_engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    with history_engine.begin() as connection:
        load_events(connection, days_ago(connection, 40), days_ago(connection, 20), 3000)
    off = maintenance.run_history_maintenance(history_engine, settings)
    assert (off.archived_events, off.dropped_partitions, off.error) == (0, 0, None)
    retention = settings.updated({"event_retention_days": 10, "event_archive_dir": str(tmp_path)})
    on = maintenance.run_history_maintenance(history_engine, retention)
    assert on.error is None and on.archived_events == 3000 and on.dropped_partitions >= 3
    assert len(list(tmp_path.glob("*.jsonl.gz"))) == on.dropped_partitions
    missing = retention.updated({"event_archive_dir": str(tmp_path / "gone")})
    failed = maintenance.run_history_maintenance(history_engine, missing)
    assert failed.error is not None and "does not exist" in failed.error


def test_retention_without_an_archive_directory_is_refused() -> None:
    with pytest.raises(ValueError, match="FINTEGRATE_EVENT_ARCHIVE_DIR"):
        load_settings(environment="test", event_retention_days=30)
