"""The migration runner against real PostgreSQL: each test owns a fresh, empty database."""

from __future__ import annotations

import hashlib
import shutil
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from service.config import DatabaseSettings
from service.kit.db import create_db_engine
from service.migrations import runner as migrations
from service.migrations.sqlsplit import strip_comments
from tests.support.tcp_proxy import TcpProxy

BROKEN_SQL = """-- second statement fails
BEGIN;
CREATE TABLE broken_half (id INTEGER);
SELECT * FROM no_such_table;
COMMIT;
"""


@pytest.fixture
def fresh_engine(database_factory: Callable[[], str]) -> Iterator[Engine]:
    engine = create_engine(database_factory())
    yield engine
    engine.dispose()


@pytest.fixture
def migration_dir(tmp_path: Path) -> Path:
    """A private copy of the real migration files, free to edit."""
    target = tmp_path / "migrations"
    shutil.copytree(migrations.MIGRATIONS_DIR, target)
    return target


def add_file(directory: Path, name: str, sql: str) -> Path:
    path = directory / name
    path.write_text(sql, encoding="utf-8")
    return path


def history(engine: Engine) -> list[tuple[str, str, str, int, str]]:
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT version, filename, checksum, execution_ms, applied_by "
                "FROM migration_history ORDER BY version"
            )
        )
        return [tuple(row) for row in rows]


def table_exists(engine: Engine, name: str) -> bool:
    with engine.connect() as connection:
        return connection.execute(text("SELECT to_regclass(:n)"), {"n": name}).scalar() is not None


def schema_snapshot(engine: Engine) -> list[tuple[str, ...]]:
    """Columns, constraints, indexes and triggers of the public schema, sorted."""
    queries = [
        "SELECT 'col', table_name, column_name, data_type, coalesce(column_default, '') "
        "FROM information_schema.columns WHERE table_schema = 'public'",
        "SELECT 'con', conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
        "FROM pg_constraint WHERE connamespace = 'public'::regnamespace",
        "SELECT 'idx', tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'",
        "SELECT 'trg', tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) "
        "FROM pg_trigger WHERE NOT tgisinternal",
    ]
    with engine.connect() as connection:
        return sorted(tuple(row) for query in queries for row in connection.execute(text(query)))


def test_apply_records_every_file_with_its_checksum(fresh_engine: Engine) -> None:
    files = migrations.discover()
    applied = migrations.apply(fresh_engine, applied_by="tester@test")
    assert [m.filename for m in applied] == [f.filename for f in files]
    rows = history(fresh_engine)
    assert [row[:2] for row in rows] == [(f.version, f.filename) for f in files]
    for (_, filename, checksum, execution_ms, applied_by), file in zip(rows, files, strict=True):
        assert checksum == hashlib.sha256((file.path).read_bytes()).hexdigest(), filename
        assert execution_ms >= 0
        assert applied_by == "tester@test"


def test_default_applied_by_names_user_and_host(fresh_engine: Engine) -> None:
    migrations.apply(fresh_engine)
    assert all("@" in row[4] for row in history(fresh_engine))


def test_second_apply_changes_nothing(fresh_engine: Engine) -> None:
    migrations.apply(fresh_engine)
    rows, snapshot = history(fresh_engine), schema_snapshot(fresh_engine)
    assert migrations.apply(fresh_engine) == []
    assert history(fresh_engine) == rows
    assert schema_snapshot(fresh_engine) == snapshot
    assert {s.state for s in migrations.status(fresh_engine)} == {"applied"}


# customer_events becomes partitioned here: the files before it address the plain table
# (ALTER TABLE ... SET (storage parameters) is refused on a partitioned one).
PARTITIONING = "20261202_0700"


def rerun_is_harmless(engine: Engine, from_version: str, to_version: str | None) -> None:
    migrations.apply(engine, to_version=to_version)
    snapshot = schema_snapshot(engine)
    with engine.begin() as connection:
        connection.execute(
            text("DELETE FROM migration_history WHERE version >= :v"), {"v": from_version}
        )
    migrations.apply(engine, to_version=to_version)
    assert schema_snapshot(engine) == snapshot


def test_files_rerun_on_an_existing_schema_are_idempotent(fresh_engine: Engine) -> None:
    """Every file uses IF NOT EXISTS forms: running them again on the schema they were
    written for is harmless (the files before the partitioning on the plain table, the
    partitioning and later files on the partitioned one)."""
    before = [f.version for f in migrations.discover() if f.version < PARTITIONING]
    rerun_is_harmless(fresh_engine, before[0], before[-1])
    rerun_is_harmless(fresh_engine, PARTITIONING, None)


def test_status_reports_pending_on_an_empty_database(fresh_engine: Engine) -> None:
    states = migrations.status(fresh_engine)
    assert [s.filename for s in states] == [f.filename for f in migrations.discover()]
    assert {s.state for s in states} == {"pending"}
    assert migrations.verify(fresh_engine) == []


def test_edited_file_is_reported_changed(fresh_engine: Engine, migration_dir: Path) -> None:
    migrations.apply(fresh_engine, migration_dir)
    edited = sorted(migration_dir.glob("*.sql"))[1]
    edited.write_text(edited.read_text() + "\n-- edited after apply\n")
    states = {s.filename: s.state for s in migrations.status(fresh_engine, migration_dir)}
    assert states[edited.name] == "changed"
    assert [s for s in states.values() if s != "applied"] == ["changed"]
    assert [p.filename for p in migrations.verify(fresh_engine, migration_dir)] == [edited.name]


def test_deleted_file_is_reported_missing(fresh_engine: Engine, migration_dir: Path) -> None:
    migrations.apply(fresh_engine, migration_dir)
    gone = sorted(migration_dir.glob("*.sql"))[-1]
    gone.unlink()
    problems = migrations.verify(fresh_engine, migration_dir)
    assert [(p.filename, p.state) for p in problems] == [(gone.name, "missing")]


def test_to_applies_up_to_a_version(fresh_engine: Engine) -> None:
    files = migrations.discover()
    applied = migrations.apply(fresh_engine, to_version=files[1].version)
    assert [m.version for m in applied] == [files[0].version, files[1].version]
    assert [f.version for f in migrations.plan(fresh_engine)] == [f.version for f in files[2:]]
    with pytest.raises(migrations.MigrationError, match="no migration file has that version"):
        migrations.apply(fresh_engine, to_version="19990101_0000")


def test_concurrent_applies_record_each_file_once(
    database_factory: Callable[[], str], migration_dir: Path
) -> None:
    add_file(migration_dir, "20991231_2359_slow.sql", "BEGIN;\nSELECT pg_sleep(0.5);\nCOMMIT;\n")
    url = database_factory()
    barrier = threading.Barrier(2)
    results: dict[int, list[migrations.AppliedMigration] | BaseException] = {}

    def run(index: int) -> None:
        engine = create_engine(url)
        try:
            barrier.wait()
            results[index] = migrations.apply(engine, migration_dir, lock_timeout_seconds=60)
        except BaseException as exc:
            results[index] = exc
        finally:
            engine.dispose()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert all(isinstance(r, list) for r in results.values()), results
    file_count = len(list(migration_dir.glob("*.sql")))
    assert sorted(len(r) for r in results.values() if isinstance(r, list)) == [0, file_count]
    check = create_engine(url)
    versions = [row[0] for row in history(check)]
    check.dispose()
    assert len(versions) == len(set(versions)) == file_count


def test_broken_file_leaves_nothing_behind(fresh_engine: Engine, migration_dir: Path) -> None:
    add_file(migration_dir, "20991231_2359_broken.sql", BROKEN_SQL)
    with pytest.raises(migrations.MigrationError) as failure:
        migrations.apply(fresh_engine, migration_dir)
    message = str(failure.value)
    assert "20991231_2359_broken.sql" in message
    assert "statement 2" in message
    assert "no_such_table" in message
    assert not table_exists(fresh_engine, "broken_half")
    recorded = [row[1] for row in history(fresh_engine)]
    assert "20991231_2359_broken.sql" not in recorded
    assert len(recorded) == len(migrations.discover())  # the good files before it stay applied


def test_broken_file_stops_the_run(fresh_engine: Engine, migration_dir: Path) -> None:
    add_file(migration_dir, "20991231_2358_broken.sql", BROKEN_SQL)
    add_file(migration_dir, "20991231_2359_after.sql", "BEGIN;\nCREATE TABLE after_it (id INT);\n")
    with pytest.raises(migrations.MigrationError, match="20991231_2358_broken"):
        migrations.apply(fresh_engine, migration_dir)
    assert not table_exists(fresh_engine, "after_it")


def test_plan_changes_nothing(fresh_engine: Engine) -> None:
    planned = migrations.plan(fresh_engine)
    assert [f.filename for f in planned] == [f.filename for f in migrations.discover()]
    assert not table_exists(fresh_engine, "migration_history")
    assert not table_exists(fresh_engine, "consumers")


def test_percent_signs_reach_the_server_untouched(
    fresh_engine: Engine, migration_dir: Path
) -> None:
    sql = (
        "BEGIN;\nCREATE TABLE pct (v TEXT DEFAULT 'a%s%%');\n"
        "DO $$ BEGIN RAISE NOTICE 'value %', 1; END $$;\nCOMMIT;\n"
    )
    add_file(migration_dir, "20991231_2359_percent.sql", sql)
    migrations.apply(fresh_engine, migration_dir)
    with fresh_engine.begin() as connection:
        connection.exec_driver_sql("INSERT INTO pct DEFAULT VALUES")
        assert connection.exec_driver_sql("SELECT v FROM pct").scalar() == "a%s%%"


def test_slow_statement_is_not_cut_by_the_service_statement_timeout(
    database_factory: Callable[[], str], migration_dir: Path
) -> None:
    url = database_factory()
    engine = create_db_engine(DatabaseSettings(url=url, statement_timeout_ms=100), pool_size=2)
    add_file(migration_dir, "20991231_2359_slow.sql", "BEGIN;\nSELECT pg_sleep(0.3);\nCOMMIT;\n")
    try:
        applied = migrations.apply(engine, migration_dir)
    finally:
        engine.dispose()
    assert applied[-1].filename == "20991231_2359_slow.sql"


def test_lock_held_elsewhere_times_out_clearly(fresh_engine: Engine) -> None:
    with fresh_engine.connect() as holder:
        holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": migrations.ADVISORY_LOCK_KEY})
        with pytest.raises(migrations.MigrationError, match="another migration run holds the lock"):
            migrations.apply(fresh_engine, lock_timeout_seconds=0.3)
        holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": migrations.ADVISORY_LOCK_KEY})
    assert not table_exists(fresh_engine, "migration_history")
    assert migrations.apply(fresh_engine)  # the lock is free again once the holder is gone


def test_wait_for_database_gives_up_on_a_closed_port(
    tcp_proxy_factory: Callable[[str, int], TcpProxy], pg_admin_engine: Engine
) -> None:
    proxy = tcp_proxy_factory("127.0.0.1", pg_admin_engine.url.port or 5432)
    proxy.refuse()
    engine = create_engine(proxy.url_for(pg_admin_engine.url.render_as_string(False)))
    with pytest.raises(migrations.MigrationError, match=r"database not reachable after 1s"):
        migrations.wait_for_database(engine, 1.0)
    engine.dispose()


def test_wait_for_database_returns_once_it_answers(
    tcp_proxy_factory: Callable[[str, int], TcpProxy], pg_admin_engine: Engine
) -> None:
    proxy = tcp_proxy_factory("127.0.0.1", pg_admin_engine.url.port or 5432)
    proxy.refuse()
    engine = create_engine(proxy.url_for(pg_admin_engine.url.render_as_string(False)))
    opener = threading.Timer(0.7, proxy.pass_through)
    opener.start()
    try:
        migrations.wait_for_database(engine, 30.0)
    finally:
        opener.join()
        engine.dispose()
    assert proxy.mode == "pass"


def test_misnamed_file_is_refused(migration_dir: Path) -> None:
    add_file(migration_dir, "add-widgets.sql", "SELECT 1;")
    with pytest.raises(migrations.MigrationError, match=r"add-widgets\.sql: name must be"):
        migrations.discover(migration_dir)


def test_statements_drop_the_files_own_transaction_wrapper(migration_dir: Path) -> None:
    sql = "-- header\nbegin;\nSELECT 1;\n/* done */ COMMIT WORK;\n"
    path = add_file(migration_dir, "20991231_2359_x.sql", sql)
    file = next(f for f in migrations.discover(migration_dir) if f.path == path)
    assert file.statements() == ["SELECT 1"]
    for real in migrations.discover():
        assert not any(
            migrations.TRANSACTION_WRAPPER.match(strip_comments(s)) for s in real.statements()
        )


def test_new_migration_writes_a_named_template(tmp_path: Path, fresh_engine: Engine) -> None:
    path = migrations.new_migration("Add widgets table!", tmp_path, now=datetime(2030, 1, 2, 3, 4))
    assert path.name == "20300102_0304_add_widgets_table.sql"
    content = path.read_text()
    assert content.startswith("-- Add widgets table!\n")
    assert "Rollback" in content
    assert "\nBEGIN;\n" in content and content.rstrip().endswith("COMMIT;")
    assert [f.filename for f in migrations.discover(tmp_path)] == [path.name]
    assert [m.filename for m in migrations.apply(fresh_engine, tmp_path)] == [path.name]


def test_new_migration_refuses_a_version_clash(tmp_path: Path) -> None:
    moment = datetime(2030, 1, 2, 3, 4)
    migrations.new_migration("first", tmp_path, now=moment)
    with pytest.raises(migrations.MigrationError, match="20300102_0304 already exists"):
        migrations.new_migration("second", tmp_path, now=moment)
    with pytest.raises(migrations.MigrationError, match="letters or digits"):
        migrations.new_migration("!!!", tmp_path, now=datetime(2030, 1, 2, 3, 5))
    assert len(list(tmp_path.glob("*.sql"))) == 1
