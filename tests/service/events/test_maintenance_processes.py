"""History maintenance as real processes beside live traffic: one `maintain` at a time, a stop
signal mid-archive, two archives at once, kill -9 during a freeze and a detach, and a lock
another session holds on an old partition while the API keeps answering."""

from __future__ import annotations

import gzip
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, text

from service.app import create_app
from service.config import Settings
from service.events import partitions, repair, stats
from tests.support.history import days_ago, load_history
from tests.support.live_server import LiveServer
from tests.support.ports import free_port
from tests.support.processes import FintegrateProcess

BIG = 120_000  # events enough that writing the files takes a few seconds
WAITING_DDL = text(
    "SELECT pid FROM pg_stat_activity WHERE application_name = 'fintegrate-archive' "
    "AND wait_event_type = 'Lock' AND query LIKE :query"
)
GROUP_BY = text(
    "SELECT event_type, publish_status, deliver_status, count(*) FROM customer_events "
    "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
)


@pytest.fixture
def history_settings(settings: Settings, history_engine: Engine) -> Settings:
    url = history_engine.url.render_as_string(hide_password=False)
    return settings.updated({"database_url": url})


def archive_args(directory: Path) -> list[str]:
    return ["events", "archive", "--older-than", "10", "--to", str(directory), "--yes", "--json"]


def wait_for(probe: Callable[[], object], seconds: float, what: str) -> object:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def archived_ids(directory: Path) -> list[str]:
    ids = []
    for path in sorted(directory.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            ids.extend(json.loads(line)["event_id"] for line in handle)
    return ids


def due_ids(engine: Engine) -> set[str]:
    """Events in partitions ending 10 days ago or earlier (what the archive takes)."""
    with engine.connect() as connection:
        cutoff = days_ago(connection, 10)
        ends = [p.range_end for p in partitions.list_partitions(connection) if p.range_end]
        edge = max(end for end in ends if end <= cutoff)
        rows = connection.execute(
            text("SELECT event_id::text FROM customer_events WHERE created_at < :edge"),
            {"edge": edge},
        )
        return set(rows.scalars())


def assert_whole(engine: Engine, directory: Path, due: set[str]) -> None:
    """Every due event archived exactly once, none left, no leftover, counts exact."""
    ids = archived_ids(directory)
    with engine.connect() as connection:
        left = set(connection.execute(text("SELECT event_id::text FROM customer_events")).scalars())
        stats.compact_counts(connection)
        counted = [tuple(r) for r in stats.event_counts(connection, None)]
        assert counted == [tuple(r) for r in connection.execute(GROUP_BY)]
        connection.commit()
    assert len(ids) == len(set(ids)) and set(ids) == due and not due & left
    assert repair.inspect_leftovers(engine) == []
    assert not [p.name for p in directory.iterdir() if p.name.endswith(".part")]
    manifest = json.loads((directory / "manifest.json").read_text())
    assert all(entry["dropped_at"] for entry in manifest["files"])
    assert sum(entry["events"] for entry in manifest["files"]) == len(ids)


def test_one_maintain_at_a_time_with_metrics_and_a_prompt_stop(
    history_settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    first = FintegrateProcess(
        "maintain1", ["maintain", "--metrics-port", str(port)], history_settings, tmp_path
    ).start()
    metrics_url = f"http://127.0.0.1:{port}/metrics"

    def passed() -> str:
        try:
            body = httpx.get(metrics_url, timeout=2).text
        except httpx.TransportError:
            return ""
        return body if 'job="fold_counts",result="ok"} 1.0' in body else ""

    body = str(wait_for(passed, 60, "a first maintenance pass"))
    assert "fintegrate_maintain_last_success_timestamp_seconds" in body
    assert "fintegrate_maintain_partitions_archived_total" in body

    second = FintegrateProcess("maintain2", ["maintain"], history_settings, tmp_path).start()
    assert second.process is not None and second.process.wait(60) == 1
    lines = [line for line in second.log_text().splitlines() if line.strip()]
    assert len(lines) == 1 and "another `fintegrate maintain` is running" in lines[0]
    assert f"fintegrate maintain pid {first.process.pid}" in lines[0]  # type: ignore[union-attr]

    started = time.monotonic()
    assert first.terminate() == 0
    assert time.monotonic() - started < 10
    assert "maintain stopped" in first.log_text()


def test_a_stop_signal_mid_retention_leaves_nothing_half_done(
    history_engine: Engine, history_settings: Settings, tmp_path: Path
) -> None:
    load_history(history_engine, old_final=BIG)
    directory = tmp_path / "archive"
    directory.mkdir()
    with history_engine.connect() as connection:
        total = connection.execute(text("SELECT count(*) FROM customer_events")).scalar_one()
    retention = history_settings.updated(
        {"event_retention_days": 10, "event_archive_dir": str(directory)}
    )
    process = FintegrateProcess("maintain", ["maintain"], retention, tmp_path).start()
    wait_for(lambda: list(directory.glob("*.jsonl.gz")), 120, "the first archive file")
    started = time.monotonic()
    assert process.terminate() == 0
    assert time.monotonic() - started < 15

    assert repair.inspect_leftovers(history_engine) == []  # nothing frozen, DEFAULT attached
    assert not [p.name for p in directory.iterdir() if p.name.endswith(".part")]
    # A stop may come after a file is written and before its manifest entry: the file is
    # then an orphan of a partition still attached (the next run writes it again). What must
    # never happen is a dropped partition the manifest does not list.
    manifest_path = directory / "manifest.json"
    entries = json.loads(manifest_path.read_text())["files"] if manifest_path.exists() else []
    with history_engine.connect() as connection:
        names = {p.name for p in partitions.list_partitions(connection)}
        remaining = connection.execute(text("SELECT count(*) FROM customer_events")).scalar_one()
    dropped = [e for e in entries if e["partition"] not in names]
    assert all(e["dropped_at"] for e in dropped)
    assert remaining + sum(e["events"] for e in dropped) == total  # nothing lost


@pytest.mark.parametrize("directories", ["the same directory", "two directories"])
def test_two_archives_at_once_one_refuses_and_the_manifest_lists_every_drop(
    directories: str, history_engine: Engine, history_settings: Settings, tmp_path: Path
) -> None:
    load_history(history_engine, old_final=BIG // 2)
    due = due_ids(history_engine)
    targets = [tmp_path / "a", tmp_path / ("a" if directories == "the same directory" else "b")]
    for target in targets:
        target.mkdir(exist_ok=True)
    runs = [
        FintegrateProcess(f"archive{i}", archive_args(target), history_settings, tmp_path)
        for i, target in enumerate(targets)
    ]
    for run in runs:
        run.start()
    codes = [run.process.wait(300) for run in runs if run.process]
    assert sorted(codes) == [0, 1]
    loser = runs[codes.index(1)]
    refusal = [line for line in loser.log_text().splitlines() if line.strip()]
    assert len(refusal) == 1 and "held by fintegrate events archive pid" in refusal[0]
    assert_whole(history_engine, targets[codes.index(0)], due)


def waiting_ddl(engine: Engine, query: str) -> list[int]:
    with engine.connect() as connection:
        return list(connection.execute(WAITING_DDL, {"query": query}).scalars())


@pytest.mark.parametrize("during", ["freeze", "detach"])
def test_kill_9_during_a_freeze_or_a_detach_then_the_next_run_repairs(
    during: str, history_engine: Engine, history_settings: Settings, tmp_path: Path
) -> None:
    load_history(history_engine, old_final=BIG)
    due = due_ids(history_engine)
    with history_engine.connect() as connection:
        oldest = partitions.list_partitions(connection)[0].name
    slow_locks = {"FINTEGRATE_MAINTENANCE_LOCK_TIMEOUT_MS": "20000"}
    holder = history_engine.connect()
    if during == "freeze":
        holder.execute(text(f"LOCK TABLE {oldest} IN ACCESS SHARE MODE"))
        query = "ALTER TABLE%customer_events_archiving%"
    else:
        query = f"ALTER TABLE customer_events DETACH PARTITION {oldest}%"
    run = FintegrateProcess(
        "archive", archive_args(tmp_path), history_settings, tmp_path, slow_locks
    ).start()
    if during == "detach":

        def frozen() -> bool:
            with history_engine.connect() as connection:
                return any(p.frozen for p in partitions.list_partitions(connection)[:1])

        wait_for(frozen, 120, f"{oldest} frozen")
        holder.execute(text(f"LOCK TABLE {oldest} IN ACCESS SHARE MODE"))
    waiting = wait_for(lambda: waiting_ddl(history_engine, query), 180, f"the {during} waiting")
    run.kill()
    # the killed client's lock request does not stay queued (client_connection_check_interval)
    wait_for(lambda: not set(waiting_ddl(history_engine, "%")) & set(waiting), 10, "it to go")
    holder.rollback()
    holder.close()
    if during == "detach":
        assert any("detach pending" in f for f in repair.inspect_leftovers(history_engine))

    rerun = FintegrateProcess("rerun", archive_args(tmp_path), history_settings, tmp_path).start()
    assert rerun.process is not None and rerun.process.wait(300) == 0, rerun.log_text()[-2000:]
    assert_whole(history_engine, tmp_path, due)


def test_a_lock_on_an_old_partition_never_stalls_creates_or_confirmations(
    history_engine: Engine, history_settings: Settings, tmp_path: Path
) -> None:
    load_history(history_engine)
    with history_engine.connect() as connection:
        oldest = partitions.list_partitions(connection)[0].name
    server = LiveServer(create_app(history_settings)).start()
    try:
        admin = {"X-Admin-Key": str(history_settings.auth.admin_api_key)}
        with httpx.Client(base_url=server.url, timeout=30) as client:
            unlimited = {"rate_limit_per_minute": 1_000_000, "rate_limit_burst": 1_000_000}
            body = {"name": f"h_{uuid.uuid4().hex[:8]}", **unlimited}  # latency, not limits
            tenant = client.post("/consumer/data", json=body, headers=admin).json()["data"]
            headers = {"X-API-Key": tenant["api_key"]}
            for i in range(60):
                client.post("/customer/data", json={"name": f"c{i}"}, headers=headers)
            with history_engine.connect() as connection:
                events = list(
                    connection.execute(
                        text("SELECT event_id::text FROM customer_events WHERE consumer_id = :c"),
                        {"c": tenant["consumer_id"]},
                    ).scalars()
                )
            holder = history_engine.connect()
            holder.execute(text(f"LOCK TABLE {oldest} IN ACCESS SHARE MODE"))
            budget = {"FINTEGRATE_MAINTENANCE_LOCK_RETRY_SECONDS": "8"}
            run = FintegrateProcess(
                "archive", archive_args(tmp_path), history_settings, tmp_path, budget
            ).start()
            latencies = traffic_while(run, client, headers, events)
            holder.rollback()
            holder.close()
    finally:
        server.stop()
    assert run.process is not None and run.process.returncode == 3
    message = [line for line in run.log_text().splitlines() if oldest in line and "held" in line]
    assert message and "AccessShareLock" in message[-1] and "nothing changed" in message[-1]
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(f"HISTORY-LOCK requests={len(latencies)} p99={p99:.3f}s max={latencies[-1]:.3f}s")
    assert len(latencies) >= 20 and p99 < 1.0 and latencies[-1] < 4.0, latencies[-5:]
    with history_engine.connect() as connection:
        kept = [p for p in partitions.list_partitions(connection) if p.name == oldest]
    assert kept and not kept[0].frozen  # left as it was, writable

    again = FintegrateProcess("again", archive_args(tmp_path), history_settings, tmp_path).start()
    assert again.process is not None and again.process.wait(300) == 0
    with history_engine.connect() as connection:
        assert oldest not in {p.name for p in partitions.list_partitions(connection)}


def traffic_while(
    run: FintegrateProcess, client: httpx.Client, headers: dict[str, str], events: list[str]
) -> list[float]:
    """Creates and confirmations, one after another, until ``run`` ends; their latencies."""
    latencies: list[float] = []
    index = 0
    while run.process is not None and run.process.poll() is None:
        started = time.monotonic()
        created = client.post("/customer/data", json={"name": "during"}, headers=headers)
        latencies.append(time.monotonic() - started)
        assert created.status_code == 201, created.text
        started = time.monotonic()
        confirmed = client.post(
            "/events/confirm-delivery",
            json={"event_id": events[index % len(events)], "status": "processed"},
            headers=headers,
        )
        latencies.append(time.monotonic() - started)
        assert confirmed.status_code == 200, confirmed.text
        index += 1
    return latencies
