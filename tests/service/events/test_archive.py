"""`events archive`: final events to gzip JSON lines + manifest, then whole partitions dropped."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg2.extensions
import pytest
from sqlalchemy import Connection, Engine, text

from service.config import Settings
from service.events import archive, archive_write, partitions, stats
from service.events.archive_files import MANIFEST_NAME, ArchiveDirectoryError
from service.kit.db import bound_database_waits
from tests.support.history import OLD_FINAL, days_ago, load_history

GROUP_BY = text(
    "SELECT event_type, publish_status, deliver_status, count(*) FROM customer_events "
    "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
)
# Partitions are whole weeks: those ending by the cut-off hold the rows before its week.
IDS_BEFORE = text(
    "SELECT event_id::text FROM customer_events "
    "WHERE created_at < date_bin('7 days', :cutoff, '2000-01-03'::timestamptz)"
)

KEPT_PARTITION_ROWS = text(
    "SELECT count(*) FROM customer_events WHERE tableoid = (SELECT tableoid FROM customer_events"
    " WHERE publish_status = 'published' AND deliver_status = 'pending')"
)


def counts_match_table(connection: Connection) -> bool:
    stats.compact_counts(connection)
    counted = [tuple(row) for row in stats.event_counts(connection, None)]
    return counted == [tuple(row) for row in connection.execute(GROUP_BY)]


def archived_lines(directory: Path) -> list[dict[str, object]]:
    lines = []
    for path in sorted(directory.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            lines.extend(json.loads(line) for line in handle)
    return lines


@pytest.fixture
def loaded(history_engine: Engine) -> Engine:
    load_history(history_engine)
    return history_engine


def test_dry_run_counts_and_changes_nothing(loaded: Engine, tmp_path: Path) -> None:
    with loaded.connect() as connection:
        before = [p.name for p in partitions.list_partitions(connection)]
    plan = archive.plan_archive(loaded, 10, tmp_path)
    with loaded.connect() as connection:
        assert [p.name for p in partitions.list_partitions(connection)] == before
        eligible = len(connection.execute(IDS_BEFORE, {"cutoff": plan.cutoff}).all())
    assert plan.events + sum(p.events for p in plan.keep) == eligible > OLD_FINAL / 2
    assert sum(p.not_final for p in plan.keep) == 1 and len(plan.keep) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fetch_rows", [archive_write.FETCH_ROWS, 7])
def test_archive_writes_verified_files_then_drops_the_partitions(
    loaded: Engine, tmp_path: Path, fetch_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archive_write, "FETCH_ROWS", fetch_rows)  # 7: many prefetched batches
    plan = archive.plan_archive(loaded, 10, tmp_path)
    kept = plan.keep[0].name
    with loaded.connect() as connection:
        expected = set(connection.execute(IDS_BEFORE, {"cutoff": plan.cutoff}).scalars())
    result = archive.run_archive(loaded, plan)

    lines = archived_lines(tmp_path)
    ids = [line["event_id"] for line in lines]
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    with loaded.connect() as connection:
        left = set(connection.execute(IDS_BEFORE, {"cutoff": plan.cutoff}).scalars())
        names = [p.name for p in partitions.list_partitions(connection)]
        frozen = [p.name for p in partitions.list_partitions(connection) if p.frozen]
        assert counts_match_table(connection)
    assert len(ids) == len(set(ids)) == result.plan.events
    assert set(ids) | left == expected and not set(ids) & left
    assert {"payload_json", "deliver_status", "created_at"} <= set(lines[0])
    assert kept in names and frozen == []
    assert not set(result.dropped) & set(names)
    for entry in manifest["files"]:
        data = (tmp_path / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert entry["dropped_at"] is not None
    assert sum(entry["events"] for entry in manifest["files"]) == len(ids)


def test_a_second_run_has_nothing_to_do(loaded: Engine, tmp_path: Path) -> None:
    archive.run_archive(loaded, archive.plan_archive(loaded, 10, tmp_path))
    manifest = (tmp_path / MANIFEST_NAME).read_text()
    again = archive.plan_archive(loaded, 10, tmp_path)
    assert again.archive == [] and len(again.keep) == 1
    archive.run_archive(loaded, again)
    assert (tmp_path / MANIFEST_NAME).read_text() == manifest


@pytest.mark.parametrize("days", [0, -5])
def test_a_cut_off_of_zero_or_less_is_refused(loaded: Engine, tmp_path: Path, days: int) -> None:
    with pytest.raises(archive.ArchiveError, match="at least 1 day"):
        archive.plan_archive(loaded, days, tmp_path)


def test_a_missing_directory_or_a_file_is_refused(loaded: Engine, tmp_path: Path) -> None:
    with pytest.raises(ArchiveDirectoryError, match="does not exist"):
        archive.plan_archive(loaded, 10, tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArchiveDirectoryError, match="not a directory"):
        archive.plan_archive(loaded, 10, tmp_path / "file")


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mounts a small tmpfs (the test runs as root, as in CI's container); unmounts it."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        target = tmp_path / f"mnt{len(mounted)}"
        target.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], check=True)
        mounted.append(target)
        return target

    yield mount
    for target in mounted:
        subprocess.run(["umount", str(target)], check=False)


def test_a_read_only_directory_is_refused(loaded: Engine, tmpfs: Callable[[str], Path]) -> None:
    with pytest.raises(ArchiveDirectoryError, match="not writable"):
        archive.plan_archive(loaded, 10, tmpfs("ro,size=64k"))


def test_a_directory_that_fills_up_stops_before_anything_is_dropped(
    loaded: Engine, tmpfs: Callable[[str], Path]
) -> None:
    target = tmpfs("size=64k")
    with loaded.connect() as connection:
        before = [p.name for p in partitions.list_partitions(connection)]
    plan = archive.plan_archive(loaded, 10, target)
    with pytest.raises(ArchiveDirectoryError, match="is full"):
        archive.run_archive(loaded, plan)
    with loaded.connect() as connection:
        after = partitions.list_partitions(connection)
    assert [p.name for p in after] == before
    assert not any(p.frozen for p in after)
    assert not list(target.glob("*.part"))


def archive_command(engine: Engine, directory: Path) -> list[str]:
    return [
        str(Path(sys.executable).parent / "fintegrate"),
        "events",
        "archive",
        "--older-than",
        "10",
        "--to",
        str(directory),
        "--yes",
        "--json",
    ]


def cli_env(engine: Engine) -> dict[str, str]:
    url = engine.url.render_as_string(hide_password=False)
    keep = {k: v for k, v in os.environ.items() if not k.startswith("FINTEGRATE_")}
    return {**keep, "FINTEGRATE_DATABASE_URL": url, "FINTEGRATE_ENVIRONMENT": "test"}


def test_kill_9_mid_archive_then_a_rerun_loses_nothing_and_archives_nothing_twice(
    history_engine: Engine, tmp_path: Path
) -> None:
    load_history(history_engine, old_final=120_000)
    with history_engine.connect() as connection:
        cutoff = days_ago(connection, 10)
        expected = set(connection.execute(IDS_BEFORE, {"cutoff": cutoff}).scalars())
    process = subprocess.Popen(
        archive_command(history_engine, tmp_path),
        env=cli_env(history_engine),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("*.jsonl.gz")) and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    assert process.wait(30) == -signal.SIGKILL  # killed mid-run, not finished
    with history_engine.connect() as connection:
        assert any(p.frozen for p in partitions.list_partitions(connection))

    rerun = subprocess.run(
        archive_command(history_engine, tmp_path),
        env=cli_env(history_engine),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr
    ids = [line["event_id"] for line in archived_lines(tmp_path)]
    with history_engine.connect() as connection:
        left = set(connection.execute(IDS_BEFORE, {"cutoff": cutoff}).scalars())
        assert not any(p.frozen for p in partitions.list_partitions(connection))
        assert counts_match_table(connection)
        kept = connection.execute(KEPT_PARTITION_ROWS).scalar_one()
    assert len(ids) == len(set(ids))  # nothing twice
    assert set(ids) | left == expected and not set(ids) & left  # nothing lost
    assert len(left) == kept  # only the partition of the event that is not final stays
    assert not list(tmp_path.glob("*.part"))


def test_a_drop_the_manifest_missed_is_recorded_by_the_next_run(
    loaded: Engine, tmp_path: Path
) -> None:
    """Killed between a drop's commit and the manifest update: the rerun notes the drop."""
    archive.run_archive(loaded, archive.plan_archive(loaded, 10, tmp_path))
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    manifest["files"][0]["dropped_at"] = None
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(manifest))
    archive.run_archive(loaded, archive.plan_archive(loaded, 10, tmp_path))
    again = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert all(entry["dropped_at"] for entry in again["files"])
    assert [e["sha256"] for e in again["files"]] == [e["sha256"] for e in manifest["files"]]


def test_an_archive_loads_back_with_plain_psql(loaded: Engine, tmp_path: Path) -> None:
    """The commands of docs/events.md "Loading an archive back", run by psql."""
    result = archive.run_archive(loaded, archive.plan_archive(loaded, 10, tmp_path))
    entry = max(result.files, key=lambda f: f["events"])
    path = tmp_path / entry["file"]
    url = loaded.url.set(drivername="postgresql").render_as_string(hide_password=False)
    copy = (
        f"\\copy raw FROM PROGRAM 'gzip -dc {path}' "
        "WITH (FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02')"
    )
    commands = [
        "CREATE TABLE restored_events (LIKE customer_events INCLUDING DEFAULTS)",
        "CREATE TEMP TABLE raw (line jsonb)",
        copy,
        "INSERT INTO restored_events "
        "SELECT (jsonb_populate_record(NULL::customer_events, line)).* FROM raw",
    ]
    arguments = [arg for command in commands for arg in ("-c", command)]
    subprocess.run(
        ["psql", url, "-v", "ON_ERROR_STOP=1", *arguments], check=True, capture_output=True
    )
    lines = {}
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            event = json.loads(line)
            lines[event["event_id"]] = event
    with loaded.connect() as connection:
        restored = connection.execute(
            text("SELECT event_id::text, payload_json, sequence FROM restored_events")
        ).all()
    assert len(restored) == entry["events"] == len(lines)
    assert all(lines[r.event_id]["payload_json"] == r.payload_json for r in restored)
    assert all(lines[r.event_id]["sequence"] == r.sequence for r in restored)


def test_archive_runs_under_the_services_psycopg2_wait_callback(
    loaded: Engine, tmp_path: Path, settings: Settings
) -> None:
    """The relay (retention) and the API install a wait callback; the archive still works."""
    bound_database_waits(settings.database)
    try:
        result = archive.run_archive(loaded, archive.plan_archive(loaded, 10, tmp_path))
    finally:
        psycopg2.extensions.set_wait_callback(None)
    assert result.dropped and sum(f["events"] for f in result.files) == result.plan.events
