"""The outbox relay: publishes pending ``customer_events`` rows, continuously, in order.

Relays share the outbox by partitions of the aggregate key, each leased to one relay at a
time (``service.messaging.publish.leases``). One round, for the partitions held:

1. read (no row locks, short transaction) the due aggregate heads, shared fairly by
   tenant, and, when few aggregates have work, the pending events behind them
   (``service.events.outbox``); tenants whose queue is full are left out
   (``service.messaging.publish.tenants``);
2. publish each aggregate's run in sequence order, wave by wave with confirms
   (``service.messaging.publish.ordered``), each message only while its lease's local
   deadline holds, checked right before its ``basic_publish``;
3. record the outcomes in one short transaction, fenced by the leases' tokens (a nack,
   "queue full", is not recorded: the event stays pending as it was).

No lock is held while the broker is waited on: confirm-delivery, resend and redeliver never
wait for a relay. A crash between the broker's confirm and the record republishes those
events later (duplicates, never reordered first arrivals): delivery is at least once and
the worker skips stale duplicates by their sequence. Those republished events are marked
``x-fintegrate-possible-duplicate`` (``PossibleDuplicates``): the worker then judges even
a customer's sequence 1 against the last delivered sequence (consume.consumer.FirstCopies).

The relay sleeps on LISTEN fintegrate_customer_events (sent by an insert trigger) with a
poll fallback, right after a round that read everything due (notifications are cleared
before each read, so one that arrives later means new work), and stops between rounds
when ``stop`` is set.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg2
import psycopg2.extensions
from sqlalchemy import Connection, Engine, RootTransaction, Row
from sqlalchemy.exc import DBAPIError

from service.config import RelaySettings, Settings
from service.events import partitions
from service.events.erasure_fence import ErasureFence
from service.events.outbox import (
    aggregate_runs,
    due_heads,
    read_everything_due,
    transaction_time,
)
from service.kit.db import (
    APPLICATION_NAME,
    CONNECT_TIMEOUT_SECONDS,
    KeptConnection,
    libpq_dsn,
)
from service.kit.errors import first_line
from service.messaging.connection import Backoff, BrokerUnavailable
from service.messaging.messages import POSSIBLE_DUPLICATE_HEADER
from service.messaging.publish.leases import PartitionLeases, Tenure
from service.messaging.publish.ordered import PublishReport, publish_runs, record_outcomes
from service.messaging.publish.publisher import ConfirmingPublisher
from service.messaging.publish.tenants import TenantTurns

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "fintegrate_customer_events"
REPORT_EVERY_SECONDS = 10.0
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
    refused: int = 0  # nacked (the tenant's queue is full): left pending, not a failure
    complete: bool = False  # the read returned every due event it could see (not summed)

    def add(self, other: BatchOutcome) -> None:
        self.claimed += other.claimed
        self.published += other.published
        self.failed += other.failed
        self.fenced += other.fenced
        self.refused += other.refused


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

    A partition taken over from an expired lease (not given back) marks *every* publish
    while this relay holds it: its previous owner may still have messages on their way
    (written before its deadline, delayed in a socket), which can reach the queue after
    anything sent now; the worker judges each marked message against the last delivered
    sequence instead of trusting its arrival order.
    """

    def __init__(self) -> None:
        # partition -> (token, watermark, taken over)
        self._marks: dict[int, tuple[int, datetime, bool]] = {}

    def unseen(self, tenure: Tenure) -> bool:
        """True when ``tenure`` holds a partition (or a token) not seen before."""
        return any(self._token(p) != token for p, token in tenure.tokens.items())

    def taken(self, tenure: Tenure, now: datetime) -> None:
        """Newly held partitions: everything created up to ``now`` is suspect."""
        for partition, token in tenure.tokens.items():
            if self._token(partition) != token:
                self._marks[partition] = (token, now, partition in tenure.taken_over)

    def unrecorded(self, rows: Iterable[Row[Any]]) -> None:
        """The outcomes of ``rows`` may not be recorded: their events become suspect."""
        for row in rows:
            token, mark, taken_over = self._marks[row.partition_no]
            self._marks[row.partition_no] = (token, max(mark, row.created_at), taken_over)

    def headers(self, row: Row[Any]) -> dict[str, Any] | None:
        """The row's extra headers: the mark when it may be a duplicate."""
        mark = self._marks.get(row.partition_no)
        if row.publish_try_count > 0 or mark is None or mark[2] or row.created_at <= mark[1]:
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

    def before_round(self, backlog: bool = True) -> list[str]:
        """Check when due and ``backlog`` (the last round was full); the partitions analysed.

        A trickle never leaves a batch pending, so the relay skips the check (a catalogue
        read and a count, in the hot path of every event's latency) unless its last round
        was full.
        """
        now = self._clock()
        if not backlog or now - self._checked_at < STATISTICS_CHECK_SECONDS:
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
            log.warning("could not refresh outbox statistics: %s", first_line(exc))
            return []
        return refreshed

    def _due(self, name: str, now: float) -> bool:
        return now - self._refreshed.get(name, -STATISTICS_REFRESH_SECONDS) >= (
            STATISTICS_REFRESH_SECONDS
        )


@dataclass(frozen=True)
class RoundConnections:
    """A round's two connections, idle between rounds.

    ``work`` runs the read, the fence's waves and a record with failures; ``autocommit``
    records a round whose every event was confirmed in one statement, one round trip
    (``PartitionLeases.fence_and_mark_published``).
    """

    work: Connection
    autocommit: Connection

    @classmethod
    @contextmanager
    def checked_out(cls, engine: Engine) -> Iterator[RoundConnections]:
        """Two connections from ``engine``'s pool, given back at the end."""
        kept = KeptRoundConnections(engine)
        try:
            yield kept.get()
        finally:
            kept.close()


class KeptRoundConnections:
    """A relay's ``RoundConnections``, kept from one round to the next."""

    def __init__(self, engine: Engine) -> None:
        self._work = KeptConnection(engine)
        self._autocommit = KeptConnection(engine, isolation_level="AUTOCOMMIT")

    def get(self) -> RoundConnections:
        return RoundConnections(self._work.get(), self._autocommit.get())

    def close(self) -> None:
        """Give both back to the pool (idle)."""
        self._work.close()
        self._autocommit.close()

    def discard(self) -> None:
        """After an error in a round: their state is unknown, neither is reused."""
        self._work.discard()
        self._autocommit.discard()


def publish_pending_batch(
    engine: Engine,
    publisher: ConfirmingPublisher,
    leases: PartitionLeases,
    batch_size: int,
    max_backoff: float,
    duplicates: PossibleDuplicates | None = None,
    turns: TenantTurns | None = None,
) -> BatchOutcome:
    """One round over the partitions held: read, publish in aggregate order, record.

    Raises BrokerUnavailable (nothing changed) when the broker cannot be reached.
    ``duplicates`` is the relay's memory of what may have been sent before (a fresh one
    marks everything pending now); ``turns`` its tenant rotation and queue-full holds.
    """
    with RoundConnections.checked_out(engine) as connections:
        return publish_round(
            connections, publisher, leases, batch_size, max_backoff, duplicates, turns
        )


def publish_round(
    connections: RoundConnections,
    publisher: ConfirmingPublisher,
    leases: PartitionLeases,
    batch_size: int,
    max_backoff: float,
    duplicates: PossibleDuplicates | None = None,
    turns: TenantTurns | None = None,
) -> BatchOutcome:
    """``publish_pending_batch`` on ``connections``."""
    tenure = leases.tenure()
    if not tenure.tokens:
        return BatchOutcome()
    round_ = _Round(
        connections,
        publisher,
        leases,
        tenure,
        max_backoff,
        duplicates or PossibleDuplicates(),
        turns or TenantTurns(),
    )
    read = connections.work.begin()
    try:
        runs, complete = _read_runs(round_, batch_size)
    except BaseException:
        read.rollback()
        raise
    if not runs:
        read.rollback()
        return BatchOutcome(complete=True)
    return _publish_runs(round_, read, runs, complete)


@dataclass(frozen=True)
class _Round:
    """What one round works with."""

    connections: RoundConnections
    publisher: ConfirmingPublisher
    leases: PartitionLeases
    tenure: Tenure
    max_backoff: float
    duplicates: PossibleDuplicates
    turns: TenantTurns

    def still_ours(self, row: Row[Any]) -> bool:
        """The gate before each publish: this relay's lease on the row's partition holds."""
        return self.leases.holds(row.partition_no, self.tenure.tokens[row.partition_no])


def _publish_runs(
    round_: _Round, read: RootTransaction, runs: list[list[Row[Any]]], complete: bool
) -> BatchOutcome:
    """Publish the runs read in ``read`` (still open: the fence's first wave goes into it),
    gated per message by the leases' deadlines, then record: the rest of a round."""
    duplicates, turns = round_.duplicates, round_.turns
    try:
        # No pre-erasure payload leaves (docs/RELIABILITY.md): the fence re-reads each wave.
        with ErasureFence.on(round_.connections.work, opened=read) as fence:
            report = publish_runs(
                round_.publisher,
                runs,
                duplicates.headers,
                gate=round_.still_ours,
                prepare=fence.around(),
            )
        outcome = _record(round_, report, sum(map(len, runs)))
    except BaseException:
        duplicates.unrecorded(row for run in runs for row in run)
        raise
    if report.broker_error:
        duplicates.unrecorded(row for run in runs for row in run)
    turns.holds.update(
        (str(row.consumer_id) for row in report.published),
        (str(row.consumer_id) for row, _ in report.failed if report.is_nacked(row)),
    )
    outcome.complete = complete and not report.broker_error
    return outcome


def _read_runs(round_: _Round, batch_size: int) -> tuple[list[list[Row[Any]]], bool]:
    """The round's read, in the caller's transaction: due heads shared fairly by tenant,
    the runs behind them, and whether that was everything due
    (``outbox.read_everything_due``)."""
    connection, leases, tenure = round_.connections.work, round_.leases, round_.tenure
    duplicates, turns = round_.duplicates, round_.turns
    if duplicates.unseen(tenure):
        duplicates.taken(tenure, transaction_time(connection))
    heads = due_heads(
        connection,
        tenure.partitions,
        leases.partition_count,
        batch_size,
        held=turns.holds.held(),
        after=turns.after,
        known=turns.known,
    )
    turns.served(heads)
    if not heads:
        return [], True
    depth = max(1, batch_size // len(heads))
    runs = aggregate_runs(connection, heads, leases.partition_count, depth)
    return runs, read_everything_due(heads, runs, depth)


def _record(round_: _Round, report: PublishReport, claimed: int) -> BatchOutcome:
    """Record the round's outcomes for the partitions PostgreSQL still says are ours.

    A nacked event (its tenant's queue is full) is not recorded at all: it stays pending
    as it was, neither a failed attempt nor backed off (``tenants.QueueFullHolds``).
    """
    leases, tenure = round_.leases, round_.tenure
    if not report.failed:  # the usual round: one statement
        ours = leases.fence_and_mark_published(
            round_.connections.autocommit, tenure, report.published
        )
        fenced = report.restricted(lambda row: row.partition_no in ours)
    else:
        connection = round_.connections.work
        with connection.begin():
            ours = leases.fence(connection, tenure)
            fenced = report.restricted(lambda row: row.partition_no in ours)
            record_outcomes(
                connection,
                fenced.restricted(lambda row: not report.is_nacked(row)),
                round_.max_backoff,
                leases.relay_id,
            )
    lost = len(report.published) + len(report.failed) - len(fenced.published) - len(fenced.failed)
    if lost:
        log.warning(
            "lease lost before recording %d outcomes (partitions %s); the new owner republishes",
            lost,
            sorted({row.partition_no for row in report.published} - ours),
        )
    if report.broker_error:
        log.warning("broker lost mid-round: %s", report.broker_error)
    refused = len(fenced.nacked)
    return BatchOutcome(claimed, len(fenced.published), len(fenced.failed) - refused, lost, refused)


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

    def clear(self) -> None:
        """Forget the notifications received so far (the next read will see their events).

        A commit after this sends a notification that ends the next ``wait`` at once, so
        the relay can sleep right after a round that read everything due instead of
        reading again for nothing.
        """
        connection = self._connection
        if connection is None:
            return
        try:
            connection.poll()
            connection.notifies.clear()
        except (psycopg2.Error, OSError):  # ``wait`` finds out and falls back to polling
            return

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
        settings: RelaySettings,
        engine: Engine,
        stop: threading.Event,
        publisher: ConfirmingPublisher,
        notifications: PendingNotifications,
        batch_size: int | None = None,
    ):
        self.settings = settings
        self.engine = engine
        self.stop = stop
        self.publisher = publisher
        self.batch_size = batch_size or settings.batch_size
        self.totals = BatchOutcome()
        self.idle = threading.Event()  # set while waiting for new events
        self.leases = PartitionLeases(
            engine, settings.partitions, settings.lease_ttl_seconds, settings.heartbeat_seconds
        )
        self._errors = Backoff(initial=0.2, maximum=MAX_ERROR_BACKOFF_SECONDS)
        self._duplicates = PossibleDuplicates()
        self._turns = TenantTurns()
        self._statistics = BacklogStatistics(engine, self.batch_size)
        self._last_claimed = self.batch_size  # a relay may start on a backlog: check first
        self._notifications = notifications
        self._reported_at = time.monotonic()
        self._connections = KeptRoundConnections(engine)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        engine: Engine,
        stop: threading.Event,
        publisher: ConfirmingPublisher | None = None,
        batch_size: int | None = None,
    ) -> OutboxRelay:
        """A relay on its group, publishing to the broker and listening on the database."""
        return cls(
            settings.relay,
            engine,
            stop,
            publisher or ConfirmingPublisher(settings.broker.url),
            PendingNotifications(settings.database.url),
            batch_size,
        )

    def run(self) -> BatchOutcome:
        """Publish until stopped; the batch in hand is always finished first."""
        log.info(
            "relay started (batch %d, poll %.1fs, %d partitions, relay id %s)",
            self.batch_size,
            self.settings.poll_seconds,
            self.leases.partition_count,
            self.leases.relay_id,
        )
        self._notifications.listen()
        try:
            while not self.stop.is_set():
                self._notifications.clear()  # what arrives from now on is news to this round
                outcome = self.cycle()
                if outcome is not None and (outcome.claimed == 0 or outcome.complete):
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
            self._statistics.before_round(self._last_claimed >= self.batch_size)
            outcome = publish_round(
                self._connections.get(),
                self.publisher,
                self.leases,
                self.batch_size,
                self.settings.max_backoff_seconds,
                self._duplicates,
                self._turns,
            )
        except BrokerUnavailable as exc:  # the round ended its transaction: keep them
            self._pause(first_line(exc))
            return None
        except DBAPIError as exc:
            self._connections.discard()
            self._pause(first_line(exc))
            return None
        except Exception:  # never die on a surprise: log it, start a fresh connection, go on
            log.exception("relay cycle failed unexpectedly")
            self._connections.discard()
            self.publisher.close()
            self._pause("unexpected error")
            return None
        self._errors.reset()
        self._last_claimed = outcome.claimed
        self.totals.add(outcome)
        self._report()
        return outcome

    def _pause(self, reason: str) -> None:
        delay = self._errors.next_delay()
        log.warning("relay paused %.1fs: %s", delay, reason)
        self.stop.wait(delay)

    def drain(self) -> BatchOutcome:
        """Publish until no due pending event is left (or ``stop``); for tests and scripts.

        A round that finds nothing while this relay holds fewer than every partition waits,
        at most two lease TTLs, for partitions of relays that are gone (one killed a moment
        ago still counts as live until its lease lapses), then takes them; next to a relay
        that is alive it ends after that wait with its own share done. Leaves the
        partitions at the end, so the next relay takes them at once.
        """
        drained = BatchOutcome()
        patience = time.monotonic() + 2 * self.leases.ttl
        try:
            while not self.stop.is_set():
                outcome = self.cycle()
                if outcome is None:
                    continue
                drained.add(outcome)
                if outcome.claimed:
                    continue
                held = len(self.leases.tenure().partitions)
                if held >= self.leases.partition_count or time.monotonic() > patience:
                    break
                self.stop.wait(self.leases.heartbeat_seconds)
                self.leases.rebalance()
        finally:
            self.leases.leave()
        return drained

    def close(self) -> None:
        self.leases.leave()
        self._connections.close()
        self.publisher.close()
        self._notifications.close()

    def _hold_partitions(self) -> None:
        """Join on first use, then rebalance between rounds (at most once per heartbeat)."""
        if not self.leases.joined:
            self.leases.join()
        else:
            self.leases.rebalance_if_due()

    def _wait_for_work(self) -> None:
        try:
            self.publisher.keepalive()
        except Exception as exc:  # a dead link is found and replaced on the next publish
            log.debug("keepalive failed: %s", exc)
        self.idle.set()
        self._notifications.wait(self._idle_timeout())
        self.idle.clear()

    def _idle_timeout(self) -> float:
        """The poll interval, or less when a held tenant may be tried again sooner."""
        release = self._turns.holds.next_release_in()
        poll = self.settings.poll_seconds
        return poll if release is None else min(poll, release)

    def _report(self) -> None:
        now = time.monotonic()
        if now - self._reported_at >= REPORT_EVERY_SECONDS:
            self._reported_at = now
            log.info(
                "relay: %d published, %d failed attempts, %d refused (queue full) so far",
                self.totals.published,
                self.totals.failed,
                self.totals.refused,
            )
