"""`fintegrate maintain`: the history's upkeep as periodic jobs, in a process of its own.

Every ``FINTEGRATE_MAINTENANCE_INTERVAL_SECONDS`` one pass runs the jobs in order, under the
history lock (so never beside an archive): repair what a killed archive left, create the
partitions ahead, move rows out of the DEFAULT partition into partitions of their own range,
expire published events never confirmed past ``FINTEGRATE_EVENT_DELIVERY_EXPIRY_DAYS``, fold
the counters, and - with ``FINTEGRATE_EVENT_RETENTION_DAYS`` - archive and drop what is past
it. A stop signal is seen between jobs, between ranges and between partitions; the work in
hand is finished or undone, never left half-done. One process at a time: a second one
exits at once, naming the first (``MaintainBusy``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from service.config import Settings
from service.events import archive, expiry, partitions, repair, stats
from service.events import maintain_metrics as metrics
from service.events.archive_files import ArchiveBusy, DirectoryLock
from service.events.archive_lock import history_lock
from service.events.locks import (
    MAINTAIN_PROCESS,
    LockPolicy,
    SessionLock,
    create_maintenance_engine,
    retry_locked,
)
from service.kit.errors import first_line

log = logging.getLogger(__name__)

ORIGIN = datetime(2000, 1, 3, tzinfo=UTC)  # spans are aligned to it (migration 20261202_0700)
MAX_DEFAULT_RANGES = 1000  # per pass: a bound, should anything keep writing into DEFAULT


class MaintainBusy(Exception):
    """Another `fintegrate maintain` runs; one line naming it."""


@dataclass
class PassReport:
    """What one pass did: a line per job, the errors, or who held the history lock."""

    done: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    skipped: str | None = None
    partitions_created: int = 0
    count_rows_folded: int = 0
    archived_events: int = 0
    dropped_partitions: int = 0


@dataclass(frozen=True)
class HistoryMaintenance:
    """A pass in the shape the earlier relay maintenance returned (tests, scripts)."""

    partitions_created: int
    count_rows_folded: int
    archived_events: int = 0
    dropped_partitions: int = 0
    error: str | None = None


class HistoryMaintainer:
    """The jobs of one pass, in order (module doc)."""

    def __init__(
        self, settings: Settings, engine: Engine, stop: threading.Event | None = None
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.stop = stop or threading.Event()
        self.policy = LockPolicy.from_settings(settings)
        self.jobs: list[tuple[str, Callable[[PassReport], str]]] = [
            ("repair", self._repair),
            ("partitions_ahead", self._partitions_ahead),
            ("default_rows", self._default_rows),
            ("expiry", self._expiry),
            ("fold_counts", self._fold_counts),
            ("retention", self._retention),
        ]

    def run_pass(self) -> PassReport:
        """Every job once, under the history lock; a busy lock skips the pass."""
        report = PassReport()
        try:
            with history_lock(self.settings, "maintain"):
                for name, job in self.jobs:
                    if self.stop.is_set():
                        break
                    self._run_job(name, job, report)
        except ArchiveBusy as exc:
            report.skipped = str(exc)
            metrics.RUNS.labels("pass", "skipped").inc()
            log.info("maintenance pass skipped: %s", exc)
        return report

    def _run_job(self, name: str, job: Callable[[PassReport], str], report: PassReport) -> None:
        try:
            summary = job(report)
        except archive.Stopped as exc:  # a stop signal, not a failure
            metrics.RUNS.labels(name, "stopped").inc()
            log.info("maintenance job %s: %s", name, exc)
            return
        except Exception as exc:  # one job failing never stops the others or the process
            report.errors[name] = first_line(exc)
            metrics.RUNS.labels(name, "error").inc()
            metrics.ERRORS.labels(name).inc()
            log.error("maintenance job %s failed: %s", name, report.errors[name])
            return
        report.done[name] = summary
        metrics.RUNS.labels(name, "ok").inc()
        metrics.LAST_SUCCESS.labels(name).set(time.time())
        if summary:
            log.info("maintenance job %s: %s", name, summary)

    def _repair(self, _report: PassReport) -> str:
        return "; ".join(repair.repair_history(self.engine, self.policy))

    def _partitions_ahead(self, report: PassReport) -> str:
        created = ensure_partitions(self.engine, self.settings, self.policy)
        report.partitions_created = created
        return f"{created} partition(s) created ahead" if created else ""

    def _default_rows(self, _report: PassReport) -> str:
        span = self.settings.event_partition_span_days
        moved = move_default_rows(self.engine, span, self.policy, self.stop)
        return f"rows moved out of DEFAULT into {', '.join(moved)}" if moved else ""

    def _expiry(self, _report: PassReport) -> str:
        days = self.settings.event_delivery_expiry_days
        total = 0
        while not self.stop.is_set():
            with self.engine.begin() as connection:
                before = expiry.database_now(connection) - timedelta(days=days)
                expired = expiry.expire_batch(connection, before, None, before, days)
            total += expired
            metrics.EVENTS_EXPIRED.inc(expired)
            if expired < expiry.BATCH_ROWS:
                break
        return f"{total} event(s) never confirmed expired (failed, receipt)" if total else ""

    def _fold_counts(self, report: PassReport) -> str:
        with self.engine.begin() as connection:
            folded = stats.compact_counts(connection)
        report.count_rows_folded = folded
        return f"{folded} count row(s) folded" if folded else ""

    def _retention(self, report: PassReport) -> str:
        days, directory = self.settings.event_retention_days, self.settings.event_archive_dir
        if days is None or not directory:
            return ""
        expiry_days = self.settings.event_delivery_expiry_days
        plan = archive.plan_archive(self.engine, days, directory, expiry_days)
        if not plan.archive:
            return ""
        lock = DirectoryLock(Path(plan.directory), "fintegrate maintain (retention)")
        lock.acquire()
        try:
            result = archive.run_archive(self.engine, plan, policy=self.policy, stop=self.stop)
        finally:
            lock.release()
        report.archived_events = sum(f["events"] for f in result.files)
        report.dropped_partitions = len(result.dropped)
        metrics.EVENTS_ARCHIVED.inc(report.archived_events)
        metrics.PARTITIONS_ARCHIVED.inc(report.dropped_partitions)
        skipped = f"; left: {result.skipped}" if result.skipped else ""
        return f"archived {report.archived_events} event(s), dropped {result.dropped}{skipped}"


def move_default_rows(
    engine: Engine, span_days: int, policy: LockPolicy, stop: threading.Event | None = None
) -> list[str]:
    """Move every row waiting in DEFAULT into a partition of its own range (created for
    it, past ones included), one range per transaction, oldest first; the partitions made."""
    moved: list[str] = []
    for _ in range(MAX_DEFAULT_RANGES):
        if stop is not None and stop.is_set():
            break
        with engine.connect() as connection:
            found = default_row_range(connection, span_days)
        if found is None:
            break
        moved.append(_create_partition(engine, *found, policy, stop))
        metrics.DEFAULT_ROWS_MOVED.inc()
    return moved


def _create_partition(
    engine: Engine,
    start: datetime,
    end: datetime,
    policy: LockPolicy,
    stop: threading.Event | None,
) -> str:
    def attempt() -> str:
        with engine.begin() as connection:
            policy.set_local(connection)
            return partitions.create_partition(connection, start, end)

    return retry_locked(f"creating the partition for {start:%Y-%m-%d}", attempt, policy, stop=stop)


def default_row_range(connection: Connection, span_days: int) -> tuple[datetime, datetime] | None:
    """The range of the oldest row waiting in DEFAULT: its span, clipped to the gap between
    the partitions around it (they may have another span); None when DEFAULT is empty."""
    oldest = partitions.oldest_default_row(connection)
    if oldest is None:
        return None
    span = timedelta(days=span_days)
    start = ORIGIN + ((oldest - ORIGIN) // span) * span
    end = start + span
    for part in partitions.list_partitions(connection):
        if part.range_end is not None and part.range_end <= oldest:
            start = max(start, part.range_end)
        elif part.range_start is not None and part.range_start > oldest:
            end = min(end, part.range_start)
    return start, end


def ensure_partitions(engine: Engine, settings: Settings, policy: LockPolicy | None = None) -> int:
    """Create the partitions ahead, each lock request bounded and retried."""
    chosen = policy or LockPolicy.from_settings(settings)

    def attempt() -> int:
        with engine.begin() as connection:
            chosen.set_local(connection)
            return partitions.ensure_partitions(connection, settings.event_partition_span_days)

    return retry_locked("creating partitions ahead", attempt, chosen)


def run_history_maintenance(engine: Engine, settings: Settings) -> HistoryMaintenance:
    """One pass (``HistoryMaintainer.run_pass``), summed up; never raises."""
    report = HistoryMaintainer(settings, engine).run_pass()
    error = report.skipped or next(iter(report.errors.values()), None)
    return HistoryMaintenance(
        report.partitions_created,
        report.count_rows_folded,
        report.archived_events,
        report.dropped_partitions,
        error,
    )


def run_maintain(
    settings: Settings, stop: threading.Event, once: bool = False
) -> PassReport | None:
    """Passes every interval until ``stop`` (or one with ``once``); the last pass's report.

    MaintainBusy when another `fintegrate maintain` holds the process lock.
    """
    process_lock = SessionLock(settings, MAINTAIN_PROCESS, "maintain")
    holder = process_lock.acquire()
    if holder is not None:
        raise MaintainBusy(f"another `fintegrate maintain` is running: {holder}")
    engine = create_maintenance_engine(settings, "fintegrate-maintain")
    maintainer = HistoryMaintainer(settings, engine, stop)
    report = None
    try:
        while not stop.is_set():
            try:
                _hold(process_lock)
                report = maintainer.run_pass()
            except DBAPIError as exc:  # the database away: try again on the next pass
                if once:
                    raise
                metrics.RUNS.labels("pass", "error").inc()
                log.warning("maintenance pass failed: %s", first_line(exc.orig or exc))
            if once:
                break
            stop.wait(settings.maintenance_interval_seconds)
    finally:
        engine.dispose()
        process_lock.release()
    return report


def _hold(process_lock: SessionLock) -> None:
    """Take the process lock again when its session was lost (a database restart)."""
    if process_lock.alive():
        return
    process_lock.release()
    holder = process_lock.acquire()
    if holder is not None:
        raise MaintainBusy(f"the maintain lock was lost and another process took it: {holder}")
