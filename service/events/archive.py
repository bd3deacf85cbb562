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

import threading
import time
from pathlib import Path

from sqlalchemy import Engine

from service.events import archive_drop, partitions, repair
from service.events.archive_files import (
    ArchiveError,
    Manifest,
    file_sha256,
    remove_stale_temp_files,
)
from service.events.archive_plan import (
    ArchivePlan,
    ArchiveResult,
    PartitionPlan,
    check_days,
    count_partition,
    plan_archive,
)
from service.events.archive_write import (
    Progress,
    Stopped,
    check_stop,
    unfreeze_quietly,
    write_files,
)
from service.events.locks import LockPolicy

__all__ = [
    "ArchiveError",
    "ArchivePlan",
    "ArchiveResult",
    "PartitionPlan",
    "Stopped",
    "check_days",
    "count_partition",
    "plan_archive",
    "run_archive",
]


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
    written = write_files(engine, plan, result, manifest, progress, policy, stop)
    try:
        check_stop(stop)
        _verify(plan.directory, written)
    except BaseException:
        unfreeze_quietly(engine, [part.name for part in written], policy)
        raise
    archive_drop.drop_partitions(engine, written, manifest, result, policy, stop)
    result.elapsed_seconds = time.monotonic() - started
    return result


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
