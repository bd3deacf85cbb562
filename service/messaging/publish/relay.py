"""The outbox relay: publishes pending ``customer_events`` rows, continuously, in order.

Relays share the outbox by partitions of the aggregate key, each leased to one relay at a
time (``service.messaging.publish.leases``). One round, for the partitions held:

1. read (no row locks, short transaction) the due aggregate heads and, when few aggregates
   have work, the pending events behind them (``service.events.outbox``);
2. publish each aggregate's run in sequence order, wave by wave with confirms
   (``service.messaging.publish.ordered``), only while the leases are valid;
3. record the outcomes in one short transaction, fenced by the leases' tokens.

No lock is held while the broker is waited on: confirm-delivery, resend and redeliver never
wait for a relay. A crash between the broker's confirm and the record republishes those
events later (duplicates, never reordered first arrivals): delivery is at least once and
the worker skips stale duplicates by their sequence. Those republished events are marked
``x-fintegrate-possible-duplicate`` (``PossibleDuplicates``), so the worker asks the API
for the last delivered sequence only for them, not for every first copy.

The relay that holds partition 0 also runs the history maintenance every five minutes
(partitions created ahead, event counts folded, the optional retention archive).

The relay sleeps on LISTEN fintegrate_customer_events (sent by an insert trigger) with a
poll fallback, and stops between rounds when ``stop`` is set.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg2
import psycopg2.extensions
from sqlalchemy import Engine, Row
from sqlalchemy.exc import DBAPIError

from service.config import Settings
from service.events import partitions
from service.events.maintenance import run_history_maintenance
from service.events.outbox import aggregate_runs, due_heads, transaction_time
from service.kit.db import APPLICATION_NAME, CONNECT_TIMEOUT_SECONDS, libpq_dsn
from service.messaging.connection import Backoff, BrokerUnavailable
from service.messaging.messages import POSSIBLE_DUPLICATE_HEADER
from service.messaging.publish.leases import PartitionLeases, Tenure
from service.messaging.publish.ordered import PublishReport, publish_runs, record_outcomes
from service.messaging.publish.publisher import ConfirmingPublisher

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "fintegrate_customer_events"
REPORT_EVERY_SECONDS = 10.0
MAINTENANCE_EVERY_SECONDS = 300.0
MAINTENANCE_PARTITION = 0  # the relay holding it runs history maintenance (one at a time)
MAX_ERROR_BACKOFF_SECONDS = 10.0
STATISTICS_CHECK_SECONDS = 1.0
STATISTICS_REFRESH_SECONDS = 60.0


@dataclass
class BatchOutcome:
    """What one round did."""

    claimed: int = 0
    published: int = 0
    failed: int = 0
    fenced: int = 0  # confirmed or failed, but the lease was lost before recording

    def add(self, other: BatchOutcome) -> None:
        self.claimed += other.claimed
        self.published += other.published
        self.failed += other.failed
        self.fenced += other.fenced


class PossibleDuplicates:
    """Which events a relay publishes that may already be in the queue (marked for the worker).

    A pending event may have reached the queue already when a publish was not recorded: the
    partition's previous owner died or lost its lease between the broker's confirm and the
    record, this relay lost the broker or the database mid-round, or a recorded failure (a
    confirm that timed out) was in fact delivered. Per partition this keeps the lease token
    it was first seen with and a watermark: an event created at or before the watermark, or
    with a failed attempt, is marked ``x-fintegrate-possible-duplicate``.

    A newly held partition's watermark is the first round's transaction time: the previous
    owner stopped publishing before its lease expired, so it can only have sent events
    committed (hence created) before then. A round whose outcomes were not all recorded
    raises the watermark of its partitions to its newest event.
    """

    def __init__(self) -> None:
        self._marks: dict[int, tuple[int, datetime]] = {}  # partition -> (token, watermark)

    def unseen(self, tenure: Tenure) -> bool:
        """True when ``tenure`` holds a partition (or a token) not seen before."""
        return any(self._token(p) != token for p, token in tenure.tokens.items())

    def taken(self, tenure: Tenure, now: datetime) -> None:
        """Newly held partitions: everything created up to ``now`` is suspect."""
        for partition, token in tenure.tokens.items():
            if self._token(partition) != token:
                self._marks[partition] = (token, now)

    def unrecorded(self, runs: list[list[Row[Any]]]) -> None:
        """The outcomes of ``runs`` may not be recorded: their events become suspect."""
        for row in (row for run in runs for row in run):
            token, mark = self._marks[row.partition_no]
            self._marks[row.partition_no] = (token, max(mark, row.created_at))

    def headers(self, row: Row[Any]) -> dict[str, Any] | None:
        """The row's extra headers: the mark when it may be a duplicate."""
        mark = self._marks.get(row.partition_no)
        if row.publish_try_count > 0 or mark is None or row.created_at <= mark[1]:
            return {POSSIBLE_DUPLICATE_HEADER: True}
        return None

    def _token(self, partition: int) -> int | None:
        mark = self._marks.get(partition)
        return None if mark is None else mark[0]


class BacklogStatistics:
    """Fresh statistics for a partition a backlog sits in while PostgreSQL counts it empty.

    A partial index VACUUMed or ANALYZEd while nothing was pending is recorded as empty, and
    the planner keeps taking it for empty as it grows (``events.partitions``
    COUNTED_EMPTY says what that did to the relay's reads). Before a round, at most every
    ``STATISTICS_CHECK_SECONDS``, the relay looks for partitions holding at least a batch
    of pending events while counted empty, and ANALYZEs them (a sample of the partition; it
    blocks no reader or writer), each at most every ``STATISTICS_REFRESH_SECONDS``.
    """

    def __init__(self, engine: Engine, batch_size: int, clock: Any = time.monotonic) -> None:
        self._engine = engine
        self._batch_size = batch_size
        self._clock = clock
        self._checked_at = -STATISTICS_CHECK_SECONDS
        self._refreshed: dict[str, float] = {}

    def before_round(self) -> list[str]:
        """Check when due; the partitions analysed."""
        now = self._clock()
        if now - self._checked_at < STATISTICS_CHECK_SECONDS:
            return []
        self._checked_at = now
        try:
            with self._engine.begin() as connection:
                stale = partitions.uncounted_backlog(connection, self._batch_size)
            refreshed = [name for name in stale if self._due(name, now)]
            for name in refreshed:
                with self._engine.begin() as connection:
                    partitions.analyze(connection, name)
                self._refreshed[name] = now
                log.info("statistics of %s refreshed: a backlog sat in it, counted empty", name)
        except DBAPIError as exc:  # not the owner, a timeout: the next check tries again
            log.warning("could not refresh outbox statistics: %s", _first_line(exc))
            return []
        return refreshed

    def _due(self, name: str, now: float) -> bool:
        return now - self._refreshed.get(name, -STATISTICS_REFRESH_SECONDS) >= (
            STATISTICS_REFRESH_SECONDS
        )


def publish_pending_batch(
    engine: Engine,
    publisher: ConfirmingPublisher,
    leases: PartitionLeases,
    batch_size: int,
    max_backoff: float,
    duplicates: PossibleDuplicates | None = None,
) -> BatchOutcome:
    """One round over the partitions held: read, publish in aggregate order, record.

    Raises BrokerUnavailable (nothing changed) when the broker cannot be reached.
    ``duplicates`` is the relay's memory of what may have been sent before (a fresh one
    marks everything pending now).
    """
    duplicates = duplicates or PossibleDuplicates()
    tenure = leases.tenure()
    if not tenure.tokens:
        return BatchOutcome()
    with engine.begin() as connection:
        if duplicates.unseen(tenure):
            duplicates.taken(tenure, transaction_time(connection))
        heads = due_heads(connection, tenure.partitions, leases.partition_count, batch_size)
        if not heads:
            return BatchOutcome()
        depth = max(1, batch_size // len(heads))
        runs = aggregate_runs(connection, heads, leases.partition_count, depth)

    def still_ours(wave: list[Row[Any]]) -> list[Row[Any]]:
        held = leases.still_held(tenure)
        return [row for row in wave if row.partition_no in held]

    try:
        report = publish_runs(publisher, runs, duplicates.headers, still_ours)
        outcome = _record(engine, leases, tenure, report, max_backoff, sum(map(len, runs)))
    except BaseException:
        duplicates.unrecorded(runs)
        raise
    if report.broker_error:
        duplicates.unrecorded(runs)
    return outcome


def _record(
    engine: Engine,
    leases: PartitionLeases,
    tenure: Tenure,
    report: PublishReport,
    max_backoff: float,
    claimed: int,
) -> BatchOutcome:
    """Record the round's outcomes for the partitions PostgreSQL still says are ours."""
    with engine.begin() as connection:
        ours = leases.fence(connection, tenure)
        fenced = report.restricted(lambda row: row.partition_no in ours)
        record_outcomes(connection, fenced, max_backoff, leases.relay_id)
    lost = len(report.published) + len(report.failed) - len(fenced.published) - len(fenced.failed)
    if lost:
        log.warning(
            "lease lost before recording %d outcomes (partitions %s); the new owner republishes",
            lost,
            sorted({row.partition_no for row in report.published} - ours),
        )
    if report.broker_error:
        log.warning("broker lost mid-round: %s", report.broker_error)
    return BatchOutcome(claimed, len(fenced.published), len(fenced.failed), lost)


class PendingNotifications:
    """A LISTEN connection on the outbox channel; ``wait`` returns early when notified."""

    def __init__(self, database_url: str):
        self._dsn = libpq_dsn(database_url)
        self._connection: psycopg2.extensions.connection | None = None

    def listen(self) -> None:
        """Start listening (before looking for work, so no wake-up is lost)."""
        try:
            self._listening()
        except (psycopg2.Error, OSError) as exc:
            log.warning("LISTEN failed (%s); polling instead", exc)

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True when a notification arrived."""
        try:
            connection = self._listening()
            if not select.select([connection], [], [], timeout)[0]:
                return False
            connection.poll()
            notified = bool(connection.notifies)
            connection.notifies.clear()
            return notified
        except (psycopg2.Error, OSError) as exc:
            log.warning("LISTEN connection lost (%s); polling instead", exc)
            self.close()
            time.sleep(timeout)
            return False

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            finally:
                self._connection = None

    def _listening(self) -> psycopg2.extensions.connection:
        if self._connection is None:
            connection = psycopg2.connect(
                self._dsn,
                connect_timeout=CONNECT_TIMEOUT_SECONDS,
                application_name=APPLICATION_NAME,
            )
            connection.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
            with connection.cursor() as cursor:
                cursor.execute(f"LISTEN {NOTIFY_CHANNEL}")
            self._connection = connection
        return self._connection


class OutboxRelay:
    """Runs publish cycles until ``stop`` is set; survives broker and database outages."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        stop: threading.Event,
        publisher: ConfirmingPublisher | None = None,
        batch_size: int | None = None,
    ):
        self.settings = settings
        self.engine = engine
        self.stop = stop
        self.publisher = publisher or ConfirmingPublisher(settings.rabbitmq_url)
        self.batch_size = batch_size or settings.relay_batch_size
        self.totals = BatchOutcome()
        self.idle = threading.Event()  # set while waiting for new events
        self.leases = PartitionLeases(
            engine,
            settings.relay_partitions,
            settings.relay_lease_ttl_seconds,
            settings.relay_heartbeat_seconds,
        )
        self._errors = Backoff(initial=0.2, maximum=MAX_ERROR_BACKOFF_SECONDS)
        self._duplicates = PossibleDuplicates()
        self._statistics = BacklogStatistics(engine, self.batch_size)
        self._notifications = PendingNotifications(settings.database_url)
        self._reported_at = time.monotonic()
        self._maintained_at = -MAINTENANCE_EVERY_SECONDS

    def run(self) -> BatchOutcome:
        """Publish until stopped; the batch in hand is always finished first."""
        log.info(
            "relay started (batch %d, poll %.1fs, %d partitions, relay id %s)",
            self.batch_size,
            self.settings.relay_poll_seconds,
            self.leases.partition_count,
            self.leases.relay_id,
        )
        self._notifications.listen()
        try:
            while not self.stop.is_set():
                outcome = self.cycle()
                if outcome is not None and outcome.claimed == 0:
                    self._wait_for_work()
        finally:
            self.close()
        log.info(
            "relay stopped: %d published, %d failed attempts",
            self.totals.published,
            self.totals.failed,
        )
        return self.totals

    def cycle(self) -> BatchOutcome | None:
        """One round; None (after a bounded backoff pause) when a dependency is down."""
        try:
            self._hold_partitions()
            self._maintain_history()
            self._statistics.before_round()
            outcome = publish_pending_batch(
                self.engine,
                self.publisher,
                self.leases,
                self.batch_size,
                self.settings.relay_max_backoff_seconds,
                self._duplicates,
            )
        except (BrokerUnavailable, DBAPIError) as exc:
            self._pause(_first_line(exc))
            return None
        except Exception:  # never die on a surprise: log it, start a fresh connection, go on
            log.exception("relay cycle failed unexpectedly")
            self.publisher.close()
            self._pause("unexpected error")
            return None
        self._errors.reset()
        self.totals.add(outcome)
        self._report()
        return outcome

    def _pause(self, reason: str) -> None:
        delay = self._errors.next_delay()
        log.warning("relay paused %.1fs: %s", delay, reason)
        self.stop.wait(delay)

    def drain(self) -> BatchOutcome:
        """Publish until no due pending event is left (or ``stop``); for tests and scripts.

        Leaves the partitions at the end, so the next relay takes them at once.
        """
        drained = BatchOutcome()
        try:
            while not self.stop.is_set():
                outcome = self.cycle()
                if outcome is None:
                    continue
                drained.add(outcome)
                if outcome.claimed == 0:
                    break
        finally:
            self.leases.leave()
        return drained

    def close(self) -> None:
        self.leases.leave()
        self.publisher.close()
        self._notifications.close()

    def _hold_partitions(self) -> None:
        """Join on first use, then rebalance between rounds (at most once per heartbeat)."""
        if not self.leases.joined:
            self.leases.join()
        else:
            self.leases.rebalance_if_due()

    def _maintain_history(self) -> None:
        """Partitions ahead, counts folded, optional retention: every 5 minutes, one relay."""
        now = time.monotonic()
        if now - self._maintained_at < MAINTENANCE_EVERY_SECONDS:
            return
        if MAINTENANCE_PARTITION not in self.leases.tenure().tokens:
            return
        self._maintained_at = now
        done = run_history_maintenance(self.engine, self.settings)
        if done.partitions_created or done.archived_events or done.dropped_partitions:
            log.info("history maintenance: %s", done)

    def _wait_for_work(self) -> None:
        try:
            self.publisher.keepalive()
        except Exception as exc:  # a dead link is found and replaced on the next publish
            log.debug("keepalive failed: %s", exc)
        self.idle.set()
        self._notifications.wait(self.settings.relay_poll_seconds)
        self.idle.clear()

    def _report(self) -> None:
        now = time.monotonic()
        if now - self._reported_at >= REPORT_EVERY_SECONDS:
            self._reported_at = now
            log.info(
                "relay: %d published, %d failed attempts so far",
                self.totals.published,
                self.totals.failed,
            )


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
