"""The outbox relay: publishes pending ``customer_events`` rows, continuously.

One cycle = one transaction: claim a batch (``FOR UPDATE SKIP LOCKED``), publish it with
confirms, mark each row published or failed (capped exponential backoff), commit. Row
locks are held across the publish, so several relays never publish a row twice in a cycle.
A crash between the broker's confirm and the commit republishes the batch later: delivery
is at least once and consumers deduplicate by event_id.

The relay sleeps on LISTEN fintegrate_customer_events (sent by an insert trigger) with a
poll fallback, and stops between batches when ``stop`` is set.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from dataclasses import dataclass

import psycopg2
import psycopg2.extensions
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from service.config import Settings
from service.db import APPLICATION_NAME, CONNECT_TIMEOUT_SECONDS, libpq_dsn
from service.messaging.connection import Backoff, BrokerUnavailable
from service.messaging.outbox import claim_pending, mark_failed, mark_published, outbound_events
from service.messaging.publisher import ConfirmingPublisher, outgoing_event

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "fintegrate_customer_events"
REPORT_EVERY_SECONDS = 10.0
MAX_ERROR_BACKOFF_SECONDS = 10.0


@dataclass
class BatchOutcome:
    """What one claim cycle did."""

    claimed: int = 0
    published: int = 0
    failed: int = 0

    def add(self, other: BatchOutcome) -> None:
        self.claimed += other.claimed
        self.published += other.published
        self.failed += other.failed


def publish_pending_batch(
    engine: Engine, publisher: ConfirmingPublisher, batch_size: int, max_backoff: float
) -> BatchOutcome:
    """Claim, publish and mark one batch in one transaction.

    Raises BrokerUnavailable (nothing changed) when the broker cannot be reached.
    """
    with engine.begin() as connection:
        rows = claim_pending(connection, batch_size)
        if not rows:
            return BatchOutcome()
        events, orphans = outbound_events(rows)
        results = publisher.publish_batch([outgoing_event(event) for event in events])
        published = [
            event.event_id for event, result in zip(events, results, strict=True) if result.ok
        ]
        failures = [
            (event.event_id, result.reason or "not confirmed")
            for event, result in zip(events, results, strict=True)
            if not result.ok
        ]
        failures += [
            (str(row.event_id), f"consumer {row.consumer_id} does not exist") for row in orphans
        ]
        mark_published(connection, published)
        mark_failed(connection, failures, max_backoff)
    return BatchOutcome(len(rows), len(published), len(failures))


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
        self._errors = Backoff(initial=0.2, maximum=MAX_ERROR_BACKOFF_SECONDS)
        self._notifications = PendingNotifications(settings.database_url)
        self._reported_at = time.monotonic()

    def run(self) -> BatchOutcome:
        """Publish until stopped; the batch in hand is always finished first."""
        log.info(
            "relay started (batch %d, poll %.1fs)",
            self.batch_size,
            self.settings.relay_poll_seconds,
        )
        self._notifications.listen()
        try:
            while not self.stop.is_set():
                outcome = self.cycle()
                if outcome is not None and outcome.claimed < self.batch_size:
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
        """One claim cycle; None (after a bounded backoff pause) when a dependency is down."""
        try:
            outcome = publish_pending_batch(
                self.engine,
                self.publisher,
                self.batch_size,
                self.settings.relay_max_backoff_seconds,
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
        """Publish until no due pending event is left (or ``stop``); for tests and scripts."""
        drained = BatchOutcome()
        while not self.stop.is_set():
            outcome = self.cycle()
            if outcome is None:
                continue
            drained.add(outcome)
            if outcome.claimed == 0:
                break
        return drained

    def close(self) -> None:
        self.publisher.close()
        self._notifications.close()

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
