"""Archive final events past a cut-off to gzip JSON lines, then drop their partitions.

A partition is archived whole, when its range ends at or before the cut-off and every row
in it is final (``service.events.finality``). Events a tenant never confirmed become final
past the delivery expiry first (``service.events.expiry``); an event never published keeps
its partition, which is reported: rows cannot move to another partition without changing
their created_at, which the append-only rule forbids.

The run is two-phased so a kill at any moment loses nothing and archives nothing twice:
1. per partition: expire what is due, freeze it (no row can change any more), write
   ``<partition>.jsonl.gz`` (unique temporary name, fsync, rename, fsync of the directory)
   and its manifest entry;
2. only once every file of the run is durable and its sha256 matches the manifest: the
   partitions are detached concurrently and dropped (``service.events.archive_drop``).
Every DDL waits at most the lock timeout and is retried (``service.events.locks``); a
partition whose lock stays taken is left as it was and reported. A rerun (or
``fintegrate maintain``) first repairs what a killed run left (``service.events.repair``),
then redoes what is left: files are named after their partition and rewritten whole.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, text

from service.events import archive_drop, expiry, partitions, repair
from service.events.archive_files import (
    ArchiveError,
    ArchiveFile,
    Manifest,
    check_directory,
    file_sha256,
    remove_stale_temp_files,
)
from service.events.finality import EXPIRABLE_EVENT, FINAL_EVENT
from service.events.locks import LockBusy, LockPolicy, describe_holders, retry_locked

log = logging.getLogger(__name__)

Progress = Callable[[int], None]
NOW = text("SELECT now()")
NO_TIMEOUT = text("SET LOCAL statement_timeout = 0")
EXPIRING = f"({EXPIRABLE_EVENT} AND created_at < CAST(:expire_before AS timestamptz))"
PARTITION_COUNTS = f"""
    SELECT consumer_id, event_type, publish_status, deliver_status, count(*) AS count,
           bool_and({FINAL_EVENT}) AS final, bool_and({EXPIRING}) AS expirable,
           min(created_at) AS first_created_at, max(created_at) AS last_created_at
    FROM {{table}} GROUP BY 1, 2, 3, 4, {EXPIRING}
"""  # noqa: S608 - constant conditions; the table name is checked
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
STATUS_KEYS = ("consumer_id", "event_type", "publish_status", "deliver_status")


class Stopped(ArchiveError):
    """A stop signal ended the run between partitions; nothing is left half-done."""


@dataclass
class PartitionPlan:
    """One partition past the cut-off, with its exact counts."""

    name: str
    range_start: datetime | None
    range_end: datetime
    events: int = 0
    not_final: int = 0
    expirable: int = 0
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
            "to_expire": self.expirable,
            "first_created_at": _iso(self.first_created_at),
            "last_created_at": _iso(self.last_created_at),
        }


@dataclass
class ArchivePlan:
    """What a run would do: partitions to archive, and partitions kept with their reason."""

    older_than_days: int
    cutoff: datetime
    directory: Path
    expire_before: datetime | None = None
    expiry_days: int | None = None
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
            "events_to_expire": sum(p.expirable for p in self.archive),
            "expire_before": _iso(self.expire_before),
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
    expired_events: int = 0
    repaired: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    elapsed_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.plan.as_dict(),
            "archived_events": sum(f["events"] for f in self.files),
            "expired_events": self.expired_events,
            "files": self.files,
            "dropped_partitions": self.dropped,
            "repaired": self.repaired,
            "skipped": self.skipped,
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


def plan_archive(
    engine: Engine,
    older_than_days: int,
    directory: str | Path,
    expiry_days: int | None = None,
) -> ArchivePlan:
    """Validate the input, then count every partition past the cut-off (nothing changes).

    With ``expiry_days``, events never confirmed that many days after their creation count
    as final (the run expires them first).
    """
    check_days(older_than_days)
    target = check_directory(Path(directory))
    with engine.begin() as connection:
        connection.execute(NO_TIMEOUT)
        now = connection.execute(NOW).scalar_one()
        cutoff = now - timedelta(days=older_than_days)
        expire_before = now - timedelta(days=expiry_days) if expiry_days else None
        plan = ArchivePlan(older_than_days, cutoff, target, expire_before, expiry_days)
        for part in partitions.list_partitions(connection):
            if part.range_end is None or part.range_end > cutoff or part.detach_pending:
                continue
            counted = count_partition(
                connection, part.name, part.range_start, part.range_end, expire_before
            )
            archivable = counted.not_final == counted.expirable
            (plan.archive if archivable else plan.keep).append(counted)
    return plan


def count_partition(
    connection: Connection,
    name: str,
    start: datetime | None,
    end: datetime,
    expire_before: datetime | None = None,
) -> PartitionPlan:
    """Exact per-group counts of one partition (one scan of it)."""
    query = text(PARTITION_COUNTS.format(table=_checked(name)))
    rows = connection.execute(query, {"expire_before": expire_before}).all()
    plan = PartitionPlan(name, start, end)
    for row in rows:
        group = dict(row._mapping)
        first, last = group.pop("first_created_at"), group.pop("last_created_at")
        final, expirable = group.pop("final"), group.pop("expirable")
        group["consumer_id"] = str(group["consumer_id"])
        plan.counts.append(group)
        plan.events += group["count"]
        if not final:
            plan.not_final += group["count"]
            plan.expirable += group["count"] if expirable else 0
        plan.first_created_at = min(filter(None, (plan.first_created_at, first)))
        plan.last_created_at = max(filter(None, (plan.last_created_at, last)))
    plan.counts = _merged(plan.counts)
    return plan


def _merged(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One count per (consumer, type, statuses): the expirable split is only for the plan."""
    merged: dict[tuple[str, ...], dict[str, Any]] = {}
    for group in groups:
        key = tuple(str(group[k]) for k in STATUS_KEYS)
        if key in merged:
            merged[key]["count"] += group["count"]
        else:
            merged[key] = dict(group)
    return list(merged.values())


def _checked(name: str) -> str:
    if not partitions.PARTITION_NAME.match(name):
        raise ValueError(f"not a customer_events partition name: {name!r}")
    return name


def run_archive(
    engine: Engine,
    plan: ArchivePlan,
    progress: Progress | None = None,
    *,
    policy: LockPolicy | None = None,
    stop: threading.Event | None = None,
) -> ArchiveResult:
    """Write every archivable partition to its file, then drop them (see module doc).

    The caller holds the history lock (``archive_lock``); tests may run it alone.
    """
    policy = policy or LockPolicy()
    result = ArchiveResult(plan)
    started = time.monotonic()
    result.repaired = repair.repair_history(engine, policy)
    remove_stale_temp_files(plan.directory)
    manifest = Manifest.load(plan.directory)
    manifest.reconcile(_existing_partitions(engine))
    written = _write_files(engine, plan, result, manifest, progress, policy, stop)
    try:
        _check_stop(stop)
        _verify(plan.directory, written)
    except BaseException:
        _unfreeze_quietly(engine, [part.name for part in written], policy)
        raise
    archive_drop.drop_partitions(engine, written, manifest, result, policy, stop)
    result.elapsed_seconds = time.monotonic() - started
    return result


def _write_files(
    engine: Engine,
    plan: ArchivePlan,
    result: ArchiveResult,
    manifest: Manifest,
    progress: Progress | None,
    policy: LockPolicy,
    stop: threading.Event | None,
) -> list[PartitionPlan]:
    """Phase 1: every partition's file and manifest entry, two partitions at a time."""
    written: list[PartitionPlan] = []
    parts = list(plan.archive)
    job = _PartitionJob(engine, plan, progress, policy, stop)
    with ThreadPoolExecutor(ARCHIVE_WORKERS, thread_name_prefix="archive") as workers:
        try:
            runs = [workers.submit(job.run, part) for part in parts]
            for part, run in zip(parts, runs, strict=True):
                outcome = run.result()
                result.expired_events += outcome.expired
                if outcome.skipped:
                    plan.archive.remove(part)
                    result.skipped[part.name] = outcome.skipped
                    continue
                if outcome.entry is None:
                    plan.archive.remove(part)
                    plan.keep.append(outcome.part)
                    continue
                manifest.record(outcome.entry)
                result.files.append(outcome.entry)
                written.append(outcome.part)
        except BaseException:
            workers.shutdown(wait=True, cancel_futures=True)
            _unfreeze_quietly(engine, [part.name for part in parts], policy)
            raise
    return written


@dataclass
class _Outcome:
    part: PartitionPlan
    entry: dict[str, Any] | None = None
    expired: int = 0
    skipped: str | None = None


@dataclass
class _PartitionJob:
    """Expire, freeze, recount and write one partition (run on a worker thread)."""

    engine: Engine
    plan: ArchivePlan
    progress: Progress | None
    policy: LockPolicy
    stop: threading.Event | None

    def run(self, part: PartitionPlan) -> _Outcome:
        _check_stop(self.stop)
        expired = self._expire(part)
        try:
            self._freeze(part.name)
        except LockBusy as exc:
            log.warning("%s", exc)
            return _Outcome(part, expired=expired, skipped=str(exc))
        frozen = self._recount(part)
        if frozen.not_final:
            _unfreeze(self.engine, part.name, self.policy)
            return _Outcome(frozen, expired=expired)
        entry = _write_partition(self.engine, frozen, self.plan.directory, self.progress, self.stop)
        return _Outcome(frozen, entry, expired)

    def _expire(self, part: PartitionPlan) -> int:
        before = self.plan.expire_before
        if before is None or not part.expirable:
            return 0
        total = 0
        while True:
            _check_stop(self.stop)
            with self.engine.begin() as connection:
                connection.execute(NO_TIMEOUT)
                expired = expiry.expire_batch(
                    connection, before, part.range_start, part.range_end, self.plan.expiry_days or 0
                )
            total += expired
            if expired < expiry.BATCH_ROWS:
                return total

    def _freeze(self, name: str) -> None:
        def attempt() -> None:
            with self.engine.begin() as connection:
                self.policy.set_local(connection)
                partitions.freeze(connection, name)

        retry_locked(
            f"freezing {name}",
            attempt,
            self.policy,
            lambda: describe_holders(self.engine, name),
            self.stop,
        )

    def _recount(self, part: PartitionPlan) -> PartitionPlan:
        with self.engine.begin() as connection:
            connection.execute(NO_TIMEOUT)
            return count_partition(connection, part.name, part.range_start, part.range_end)


def _check_stop(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise Stopped("stopped by a signal between partitions; nothing is left half-done")


def _verify(directory: Path, written: list[PartitionPlan]) -> None:
    """Each file's sha256 as the manifest on disk records it, before anything is dropped."""
    entries = Manifest.load(directory).entries
    for part in written:
        entry = entries.get(part.name)
        path = directory / f"{part.name}.jsonl.gz"
        if entry is None or not path.exists() or file_sha256(path) != entry["sha256"]:
            raise ArchiveError(
                f"{path.name} does not match its manifest entry; nothing was dropped, "
                "run the archive again"
            )


def _existing_partitions(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        return {p.name for p in partitions.list_partitions(connection)}


def _unfreeze(engine: Engine, name: str, policy: LockPolicy) -> None:
    def attempt() -> None:
        with engine.begin() as connection:
            policy.set_local(connection)
            partitions.unfreeze(connection, name)

    retry_locked(f"unfreezing {name}", attempt, policy, lambda: describe_holders(engine, name))


def _unfreeze_quietly(engine: Engine, names: list[str], policy: LockPolicy) -> None:
    for name in names:
        # best effort on the way out; the next run (or `fintegrate maintain`) repairs
        with contextlib.suppress(Exception):
            _unfreeze(engine, name, policy)


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
    engine: Engine,
    part: PartitionPlan,
    directory: Path,
    progress: Progress | None,
    stop: threading.Event | None = None,
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
            _check_stop(stop)
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
