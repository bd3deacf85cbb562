"""Archive final events past a cut-off to gzip JSON lines, then drop their partitions.

A partition is archived whole, when its range ends at or before the cut-off and every row
in it is final (published, and delivered or failed). A partition holding an event that is
not final is kept whole and reported: rows cannot move to another partition without
changing their created_at, which the append-only rule forbids.

The run is two-phased so a kill at any moment loses nothing and archives nothing twice:
1. per partition: freeze it (no row can change any more), write ``<partition>.jsonl.gz``
   (temporary name, fsync, rename, fsync of the directory) and its manifest entry;
2. only once every file of the run is durable: per partition, one transaction subtracts
   its counts, detaches and drops it, then the manifest records the drop.
A rerun redoes what is left: files are named after their partition and rewritten whole.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError

from service.events import partitions, stats
from service.events.archive_files import ArchiveError, ArchiveFile, Manifest, check_directory
from service.webhooks.delivery import repository as webhook_deliveries

Progress = Callable[[int], None]
FINAL = "publish_status = 'published' AND deliver_status IN ('delivered', 'failed')"
NOW = text("SELECT now()")
NO_TIMEOUT = text("SET LOCAL statement_timeout = 0")
DROP_LOCK_TIMEOUT = text("SET LOCAL lock_timeout = '10s'")
DROP_ATTEMPTS = 3
PARTITION_COUNTS = """
    SELECT consumer_id, event_type, publish_status, deliver_status, count(*) AS count,
           min(created_at) AS first_created_at, max(created_at) AS last_created_at
    FROM {table} GROUP BY 1, 2, 3, 4
"""
# A server-side cursor, not COPY: COPY cannot run under the psycopg2 wait callback the
# service installs (service.kit.db.bound_database_waits), and the relay runs the retention.
ROWS_AS_JSON = "SELECT row_to_json(e)::text FROM {table} e"
# Rows per fetch. Each batch is held about five times at its peak (psycopg2's result, the
# row strings, the joined text, its bytes, the file buffer): ~3 MB of JSON a batch here.
# Two partitions at once, each one batch ahead: 162 MB peak RSS (3,000 rows: 139 MB and
# 10 % slower); 20,000 rows, one partition, no prefetch peaked at 204 MB (target 200 MB).
FETCH_ROWS = 5_000
# Partitions frozen, counted and written at once, each on its own connection: one
# partition at a time left half of two cores idle (PostgreSQL's scans and our gzip take
# turns even with the prefetch). The manifest is still written in partition order.
ARCHIVE_WORKERS = 2


@dataclass
class PartitionPlan:
    """One partition past the cut-off, with its exact counts."""

    name: str
    range_start: datetime | None
    range_end: datetime
    events: int = 0
    not_final: int = 0
    first_created_at: datetime | None = None
    last_created_at: datetime | None = None
    counts: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "partition": self.name,
            "range_start": self.range_start.isoformat() if self.range_start else None,
            "range_end": self.range_end.isoformat(),
            "events": self.events,
            "not_final": self.not_final,
            "first_created_at": _iso(self.first_created_at),
            "last_created_at": _iso(self.last_created_at),
        }


@dataclass
class ArchivePlan:
    """What a run would do: partitions to archive, and partitions kept with their reason."""

    older_than_days: int
    cutoff: datetime
    directory: Path
    archive: list[PartitionPlan] = field(default_factory=list)
    keep: list[PartitionPlan] = field(default_factory=list)

    @property
    def events(self) -> int:
        return sum(p.events for p in self.archive)

    def as_dict(self) -> dict[str, Any]:
        return {
            "older_than_days": self.older_than_days,
            "cutoff": self.cutoff.isoformat(),
            "directory": str(self.directory),
            "events_to_archive": self.events,
            "events_kept_not_final": sum(p.not_final for p in self.keep),
            "archive": [p.as_dict() for p in self.archive],
            "keep": [p.as_dict() for p in self.keep],
        }


@dataclass
class ArchiveResult:
    """What a run did."""

    plan: ArchivePlan
    files: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    elapsed_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.plan.as_dict(),
            "archived_events": sum(f["events"] for f in self.files),
            "files": self.files,
            "dropped_partitions": self.dropped,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def check_days(older_than_days: int) -> None:
    if older_than_days <= 0:
        raise ArchiveError(
            f"--older-than must be at least 1 day (got {older_than_days}); "
            "events younger than the cut-off are never archived"
        )


def plan_archive(engine: Engine, older_than_days: int, directory: str | Path) -> ArchivePlan:
    """Validate the input, then count every partition past the cut-off (nothing changes)."""
    check_days(older_than_days)
    target = check_directory(Path(directory))
    with engine.begin() as connection:
        connection.execute(NO_TIMEOUT)
        cutoff = connection.execute(NOW).scalar_one() - timedelta(days=older_than_days)
        plan = ArchivePlan(older_than_days, cutoff, target)
        for part in partitions.list_partitions(connection):
            if part.range_end is None or part.range_end > cutoff:
                continue
            counted = count_partition(connection, part.name, part.range_start, part.range_end)
            (plan.keep if counted.not_final else plan.archive).append(counted)
    return plan


def count_partition(
    connection: Connection, name: str, start: datetime | None, end: datetime
) -> PartitionPlan:
    """Exact per-group counts of one partition (one scan of it)."""
    rows = connection.execute(text(PARTITION_COUNTS.format(table=_checked(name)))).all()
    plan = PartitionPlan(name, start, end)
    # The webhook channel (SPEC 8): an event is final only when every channel is.
    plan.not_final += webhook_deliveries.pending_in_range(connection, start, end)
    for row in rows:
        group = dict(row._mapping)
        first, last = group.pop("first_created_at"), group.pop("last_created_at")
        group["consumer_id"] = str(group["consumer_id"])
        plan.counts.append(group)
        plan.events += group["count"]
        if not (group["publish_status"] == "published" and group["deliver_status"] != "pending"):
            plan.not_final += group["count"]
        plan.first_created_at = min(filter(None, (plan.first_created_at, first)))
        plan.last_created_at = max(filter(None, (plan.last_created_at, last)))
    return plan


def _checked(name: str) -> str:
    if not partitions.PARTITION_NAME.match(name):
        raise ValueError(f"not a customer_events partition name: {name!r}")
    return name


def run_archive(
    engine: Engine, plan: ArchivePlan, progress: Progress | None = None
) -> ArchiveResult:
    """Write every archivable partition to its file, then drop them (see module doc)."""
    result = ArchiveResult(plan)
    started = time.monotonic()
    manifest = Manifest.load(plan.directory)
    manifest.reconcile(_existing_partitions(engine))
    written: list[PartitionPlan] = []
    parts = list(plan.archive)
    with ThreadPoolExecutor(ARCHIVE_WORKERS, thread_name_prefix="archive") as workers:
        try:
            runs = [
                workers.submit(_archive_one, engine, part, plan.directory, progress)
                for part in parts
            ]
            for part, run in zip(parts, runs, strict=True):
                frozen, entry = run.result()
                if entry is None:
                    plan.archive.remove(part)
                    plan.keep.append(frozen)
                    continue
                manifest.record(entry)
                result.files.append(entry)
                written.append(frozen)
        except BaseException:
            workers.shutdown(wait=True, cancel_futures=True)
            for part in parts:
                _unfreeze_quietly(engine, part.name)
            raise
    for part in written:
        _drop_partition(engine, part)
        manifest.mark_dropped(part.name)
        result.dropped.append(part.name)
    result.elapsed_seconds = time.monotonic() - started
    return result


def _archive_one(
    engine: Engine, part: PartitionPlan, directory: Path, progress: Progress | None
) -> tuple[PartitionPlan, dict[str, Any] | None]:
    """Freeze and recount ``part``; its file and manifest entry, or None (unfrozen again)
    when an event in it is not final."""
    frozen = _freeze_and_recount(engine, part)
    if frozen.not_final:
        _unfreeze(engine, part.name)
        return frozen, None
    return frozen, _write_partition(engine, frozen, directory, progress)


def _existing_partitions(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        return {p.name for p in partitions.list_partitions(connection)}


def _freeze_and_recount(engine: Engine, part: PartitionPlan) -> PartitionPlan:
    with engine.begin() as connection:
        connection.execute(NO_TIMEOUT)
        partitions.freeze(connection, part.name)
    with engine.begin() as connection:
        connection.execute(NO_TIMEOUT)
        return count_partition(connection, part.name, part.range_start, part.range_end)


def _unfreeze(engine: Engine, name: str) -> None:
    with engine.begin() as connection:
        partitions.unfreeze(connection, name)


def _unfreeze_quietly(engine: Engine, name: str) -> None:
    with contextlib.suppress(Exception):  # best effort on the way out; a rerun unfreezes
        _unfreeze(engine, name)


def _prefetched(fetch: Callable[[], list[Any]]) -> Iterator[list[Any]]:
    """The batches of ``fetch`` until an empty one, the next fetched while one is used.

    PostgreSQL renders the next batch's JSON (and psycopg2 waits for it, without the GIL)
    while this thread compresses the current one: on two cores about 1.3x the events/s of
    fetching and compressing in turn (docs/capacity.md). One batch ahead keeps the memory
    bound: at most two batches are held.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="archive-fetch") as fetcher:
        upcoming = fetcher.submit(fetch)
        while rows := upcoming.result():
            upcoming = fetcher.submit(fetch)
            yield rows


def _write_partition(
    engine: Engine, part: PartitionPlan, directory: Path, progress: Progress | None
) -> dict[str, Any]:
    """Stream the frozen partition into its file (FETCH_ROWS at a time); its manifest entry."""
    archive = ArchiveFile(directory, part.name, progress)
    raw = engine.raw_connection()
    try:
        setup: Any = raw.cursor()
        setup.execute("SET LOCAL statement_timeout = 0")
        setup.close()
        cursor: Any = raw.cursor(name=f"archive_{part.name}")
        cursor.itersize = FETCH_ROWS
        cursor.execute(ROWS_AS_JSON.format(table=_checked(part.name)))
        for rows in _prefetched(lambda: cursor.fetchmany(FETCH_ROWS)):
            archive.write("\n".join(row[0] for row in rows) + "\n")
        cursor.close()
        raw.rollback()
    except BaseException:
        archive.abandon()
        raise
    finally:
        raw.close()
    digest, size, lines = archive.finish()
    if lines != part.events:
        raise ArchiveError(
            f"{part.name}: wrote {lines} lines but counted {part.events} events; "
            "nothing was dropped, run the archive again"
        )
    return {
        "file": archive.final_path.name,
        **part.as_dict(),
        "bytes": size,
        "sha256": digest,
        "counts": part.counts,
        "archived_at": datetime.now().astimezone().isoformat(),
        "dropped_at": None,
    }


def _drop_partition(engine: Engine, part: PartitionPlan) -> None:
    """Subtract its counts, detach and drop it: one transaction, retried while locked out.

    DETACH needs the table to itself for a moment; a long transaction on customer_events
    makes it wait ``lock_timeout`` (10 s), then it is tried again (three times in all).
    """
    for attempt in range(1, DROP_ATTEMPTS + 1):
        try:
            with engine.begin() as connection:
                connection.execute(NO_TIMEOUT)
                connection.execute(DROP_LOCK_TIMEOUT)
                stats.subtract_counts(connection, json.dumps(part.counts))
                partitions.detach_and_drop(connection, part.name)
            return
        except OperationalError as exc:
            if "lock timeout" not in str(exc) or attempt == DROP_ATTEMPTS:
                raise ArchiveError(
                    f"{part.name}: could not drop it ({str(exc.orig).strip().splitlines()[0]}); "
                    "its file is complete, rerun the archive to finish"
                ) from exc
