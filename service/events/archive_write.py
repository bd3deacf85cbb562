"""Phase 1 of the archive: per partition, expire what is due, freeze, recount, and stream
the rows into ``<partition>.jsonl.gz`` (two partitions at a time, each on its connection)."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from service.events import expiry, partitions
from service.events.archive_drop import unfreeze_partition
from service.events.archive_files import ArchiveError, ArchiveFile, Manifest
from service.events.archive_plan import (
    NO_TIMEOUT,
    ArchivePlan,
    ArchiveResult,
    PartitionPlan,
    checked_name,
    count_partition,
)
from service.events.locks import LockBusy, LockPolicy, describe_holders, retry_locked

log = logging.getLogger(__name__)

Progress = Callable[[int], None]
ROWS_AS_JSON = "SELECT row_to_json(e)::text FROM {table} e"
# Rows per fetch. Each batch is held about five times at its peak (psycopg2's result, the
# row strings, the joined text, its bytes, the file buffer), and two partitions run at
# once, each one batch ahead: the size keeps the archive's peak memory under its 200 MB
# target with fetches large enough not to slow it (figures: docs/capacity.md).
FETCH_ROWS = 5_000
# Partitions frozen, counted and written at once, each on its own connection: one
# partition at a time left half of two cores idle (PostgreSQL's scans and our gzip take
# turns even with the prefetch). The manifest is still written in partition order.
ARCHIVE_WORKERS = 2


class Stopped(ArchiveError):
    """A stop signal ended the run between partitions; nothing is left half-done."""


def write_files(
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
            unfreeze_quietly(engine, [part.name for part in parts], policy)
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
        check_stop(self.stop)
        expired = self._expire(part)
        try:
            self._freeze(part.name)
        except LockBusy as exc:
            log.warning("%s", exc)
            return _Outcome(part, expired=expired, skipped=str(exc))
        frozen = self._recount(part)
        if frozen.not_final:
            unfreeze_partition(self.engine, part.name, self.policy)
            return _Outcome(frozen, expired=expired)
        entry = _write_partition(self.engine, frozen, self.plan.directory, self.progress, self.stop)
        return _Outcome(frozen, entry, expired)

    def _expire(self, part: PartitionPlan) -> int:
        before = self.plan.expire_before
        if before is None or not part.expirable:
            return 0
        total = 0
        while True:
            check_stop(self.stop)
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


def check_stop(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise Stopped("stopped by a signal between partitions; nothing is left half-done")


def unfreeze_quietly(engine: Engine, names: list[str], policy: LockPolicy) -> None:
    for name in names:
        # best effort on the way out; the next run (or `fintegrate maintain`) repairs
        with contextlib.suppress(Exception):
            unfreeze_partition(engine, name, policy)


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
        cursor.execute(ROWS_AS_JSON.format(table=checked_name(part.name)))
        for rows in _prefetched(lambda: cursor.fetchmany(FETCH_ROWS)):
            check_stop(stop)
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
