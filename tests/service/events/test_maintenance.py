"""History maintenance on the real PostgreSQL: DEFAULT rows moved out, never-confirmed events
expired, 30 days with 1 event in 60 undelivered archived whole, leftovers repaired."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, create_engine, text

from service.config import Settings
from service.events import archive, maintenance, partitions, repair, stats
from service.events.locks import LockPolicy
from tests.support.history import days_ago, db_now, history_database, load_events

ROW_DIGESTS = text("SELECT event_id::text, md5(e::text) FROM customer_events e ORDER BY 1")
IN_DEFAULT = text("SELECT count(*) FROM customer_events_default")
GROUP_BY = text(
    "SELECT event_type, publish_status, deliver_status, count(*) FROM customer_events "
    "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
)
EXPIRED_RECEIPTS = text(
    "SELECT count(*) FROM consumer_event_receipts WHERE status = 'failed' "
    "AND detail LIKE 'expired: not confirmed within 7 days%'"
)
ALL_IDS = text("SELECT event_id::text FROM customer_events")
TOTAL = 3000
UNDELIVERED = TOTAL // 60


@pytest.fixture
def bare_engine(migrated_database_factory: Callable[[], str]) -> Iterator[Engine]:
    """Migrated, with partitions only from the current span on: old rows land in DEFAULT."""
    engine = create_engine(migrated_database_factory())
    yield engine
    engine.dispose()


@pytest.fixture
def weekly_engine(database_factory: Callable[[], str]) -> Iterator[Engine]:
    engine = history_database(database_factory)
    yield engine
    engine.dispose()


def thirty_days_one_in_sixty_undelivered(engine: Engine) -> None:
    """TOTAL events over the last 30 days; every 60th published and never confirmed."""
    with engine.begin() as connection:
        start, end = days_ago(connection, 30), days_ago(connection, 0.01)
        load_events(connection, start, end, TOTAL - UNDELIVERED)
        load_events(connection, start, end, UNDELIVERED, "published", "pending")


def counts_match(connection: Connection) -> bool:
    stats.compact_counts(connection)
    counted = [tuple(row) for row in stats.event_counts(connection, None)]
    return counted == [tuple(row) for row in connection.execute(GROUP_BY)]


def archived(directory: Path) -> list[dict[str, object]]:
    lines = []
    for path in sorted(directory.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            lines.extend(json.loads(line) for line in handle)
    return lines


def test_rows_in_default_move_into_partitions_of_their_own_past_ones_included(
    bare_engine: Engine, settings: Settings
) -> None:
    thirty_days_one_in_sixty_undelivered(bare_engine)
    with bare_engine.connect() as connection:
        waiting = connection.execute(IN_DEFAULT).scalar_one()
        before = connection.execute(ROW_DIGESTS).all()
    assert waiting > TOTAL / 2  # everything before the current span

    moved = maintenance.move_default_rows(bare_engine, 7, LockPolicy())

    with bare_engine.connect() as connection:
        assert connection.execute(IN_DEFAULT).scalar_one() == 0
        assert connection.execute(ROW_DIGESTS).all() == before  # every row, unchanged
        listed = partitions.list_partitions(connection)
        assert counts_match(connection)
    made = [p for p in listed if p.name in moved]
    assert len(made) == len(moved) >= 4
    assert all(p.range_start and p.range_end - p.range_start <= timedelta(days=7) for p in made)
    assert listed[-1].name == partitions.DEFAULT_PARTITION


@pytest.mark.parametrize("layout", ["weekly partitions", "written late into DEFAULT"])
def test_thirty_days_with_one_in_sixty_undelivered_archive_every_event_past_the_cutoff(
    layout: str, bare_engine: Engine, weekly_engine: Engine, tmp_path: Path
) -> None:
    engine = weekly_engine if layout == "weekly partitions" else bare_engine
    thirty_days_one_in_sixty_undelivered(engine)
    waiting = archive.plan_archive(engine, 10, tmp_path).default_rows
    assert (waiting > 0) == (layout == "written late into DEFAULT")  # the preview says so
    maintenance.move_default_rows(engine, 7, LockPolicy())  # what `events archive` does first
    plan = archive.plan_archive(engine, 10, tmp_path, expiry_days=7)
    with engine.connect() as connection:
        first_kept = min(
            p.range_start
            for p in partitions.list_partitions(connection)
            if p.range_end and p.range_end > plan.cutoff and p.range_start
        )
        due = set(
            connection.execute(
                text("SELECT event_id::text FROM customer_events WHERE created_at < :at"),
                {"at": first_kept},
            ).scalars()
        )
    # the first kept week starts 10 to 17 days back, by the weekday: 13 to 20 of the 30 days
    assert plan.keep == [] and plan.events == len(due) > TOTAL / 3

    result = archive.run_archive(engine, plan, policy=LockPolicy())

    lines = archived(tmp_path)
    ids = [str(line["event_id"]) for line in lines]
    with engine.connect() as connection:
        left = set(connection.execute(ALL_IDS).scalars())
        receipts = connection.execute(EXPIRED_RECEIPTS).scalar_one()
        assert counts_match(connection)
    assert len(ids) == len(set(ids)) and set(ids) == due and not due & left
    expired = [line for line in lines if line["deliver_status"] == "failed"]
    assert len(expired) == result.expired_events == receipts > 0  # policy: failed + receipt
    assert all(line["publish_status"] == "published" for line in expired)


def test_a_never_published_event_keeps_its_partition(weekly_engine: Engine, tmp_path: Path) -> None:
    """Expiry is for tenants that never confirm; the relay still owes an unpublished event."""
    with weekly_engine.begin() as connection:
        load_events(connection, days_ago(connection, 30), days_ago(connection, 20), 100)
        load_events(
            connection, days_ago(connection, 25), days_ago(connection, 24), 1, "pending", "pending"
        )
    plan = archive.plan_archive(weekly_engine, 10, tmp_path, expiry_days=7)
    assert [p.not_final for p in plan.keep] == [1] and plan.keep[0].expirable == 0
    archive.run_archive(weekly_engine, plan, policy=LockPolicy())
    with weekly_engine.connect() as connection:
        pending = connection.execute(
            text("SELECT count(*) FROM customer_events WHERE publish_status = 'pending'")
        ).scalar_one()
    assert pending == 1


def test_a_maintenance_pass_expires_what_a_tenant_never_confirmed(
    weekly_engine: Engine, settings: Settings
) -> None:
    with weekly_engine.begin() as connection:
        load_events(
            connection, days_ago(connection, 9), days_ago(connection, 8), 7, "published", "pending"
        )
        load_events(
            connection, days_ago(connection, 2), db_now(connection), 5, "published", "pending"
        )
    url = weekly_engine.url.render_as_string(hide_password=False)
    report = maintenance.HistoryMaintainer(
        settings.updated({"database_url": url}), weekly_engine
    ).run_pass()
    assert report.errors == {} and report.skipped is None
    with weekly_engine.connect() as connection:
        statuses = dict(
            connection.execute(
                text("SELECT deliver_status, count(*) FROM customer_events GROUP BY 1")
            ).all()
        )
        assert connection.execute(EXPIRED_RECEIPTS).scalar_one() == 7
    assert statuses == {"failed": 7, "pending": 5}  # the recent ones wait


def test_repair_undoes_or_finishes_what_a_killed_archive_left(
    weekly_engine: Engine, tmp_path: Path
) -> None:
    """The states a kill can leave, made by hand: each repaired, nothing lost."""
    with weekly_engine.begin() as connection:
        load_events(connection, days_ago(connection, 40), days_ago(connection, 12), 2000)
    policy = LockPolicy()
    with weekly_engine.connect() as connection:
        old = [
            p
            for p in partitions.list_partitions(connection)
            if p.range_end and p.range_end < days_ago(connection, 10)
        ]
        total = connection.execute(text("SELECT count(*) FROM customer_events")).scalar_one()
    frozen, pending, detached = old[-1], old[-2], old[-3]
    with weekly_engine.connect() as connection:
        archived_rows = sum(
            connection.execute(text(f"SELECT count(*) FROM {part.name}")).scalar_one()
            for part in (pending, detached)
        )
    with weekly_engine.begin() as connection:
        for part in (frozen, pending, detached):
            partitions.freeze(connection, part.name)
        connection.execute(text(f"ALTER TABLE customer_events DETACH PARTITION {detached.name}"))
        partitions.detach_default(connection)
    with weekly_engine.connect() as plain:
        auto = plain.execution_options(isolation_level="AUTOCOMMIT")
        holder = weekly_engine.connect()
        holder.execute(text(f"LOCK TABLE {pending.name} IN ACCESS SHARE MODE"))
        auto.execute(text("SET lock_timeout = 300"))
        with pytest.raises(Exception, match="lock timeout"):
            partitions.detach_concurrently(auto, pending.name, finalize=False)
        holder.rollback()
        holder.close()
    assert len(repair.inspect_leftovers(weekly_engine)) == 4

    repaired = repair.repair_history(weekly_engine, policy)

    assert len(repaired) == 4 and repair.inspect_leftovers(weekly_engine) == []
    with weekly_engine.connect() as connection:
        names = {p.name for p in partitions.list_partitions(connection)}
        assert partitions.default_attached(connection) and counts_match(connection)
        remaining = connection.execute(text("SELECT count(*) FROM customer_events")).scalar_one()
    assert frozen.name in names and pending.name not in names and detached.name not in names
    assert archived_rows > 0 and remaining == total - archived_rows
