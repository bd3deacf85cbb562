"""``fintegrate webhooks deliver``: claim due deliveries, POST them signed, record outcomes.

One loop, on a database connection it keeps, claims (repository.claim_due: each customer's
due deliveries per endpoint, within a budget of held rows per endpoint) and records the
outcomes of the POSTs finished since its last turn in one transaction: the deliveries
(fenced by their claim tokens), the attempt rows, each endpoint's health (breaker,
auto-disable, with an audit row), and on 2xx the ``processed`` receipts the queue channel
writes too. A fixed pool of threads POSTs what ``EndpointLanes`` lets go: at most the
in-flight cap per endpoint, a slot free as soon as its answer is in, a customer's next
event once the previous one's 2xx is in. A thread that finishes starts the next POST itself.
Several processes may run: claims never overlap, and a killed process's claims lapse
after ``claim_seconds(timeout)`` and are sent again.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from service.config import Settings, WebhookSettings
from service.events.repository import record_processed
from service.http.audit import AuditEntry, write_audit_in
from service.kit import tracing
from service.kit.db import KeptConnection
from service.kit.errors import first_line
from service.messaging.messages import event_from_row, message_body
from service.messaging.publish.relay import PendingNotifications
from service.webhooks import repository as endpoints
from service.webhooks.delivery import repository
from service.webhooks.delivery.lanes import EndpointLanes
from service.webhooks.delivery.metrics import count_attempt
from service.webhooks.delivery.outcomes import AttemptResult, Decision, decide
from service.webhooks.delivery.sender import EndpointClients, delivery_headers, post
from service.webhooks.delivery.targets import EndpointTargets
from service.webhooks.destinations import DestinationPolicy
from service.webhooks.signing import SecretBox

log = logging.getLogger(__name__)

CLAIM_MARGIN_SECONDS = 10.0
# The timeout bounds each phase (pool, connect, write, read), not the whole POST.
TIMEOUT_PHASES = 4
BUSY_WAIT_SECONDS = 0.02
# Claimed deliveries queue for the threads up to this many times their number, so a thread
# that finishes takes the next one at once instead of waiting for the next claim.
QUEUED_PER_THREAD = 4
# Rows one endpoint may hold claimed (sent, waiting or queued) per in-flight slot, so its
# next POSTs are at hand when a slot frees, without one endpoint taking every claim.
HELD_PER_SLOT = 8
# A claimed row not sent within this goes back: a POST started later could outlive its claim.
HOLD_SECONDS = CLAIM_MARGIN_SECONDS / 2
RECEIPT_DETAIL = "webhook {endpoint_id}"


@dataclass
class DeliveryTotals:
    """What this process did: attempts by outcome."""

    delivered: int = 0
    retrying: int = 0
    failed: int = 0
    lost_claims: int = 0

    def count(self, decision: Decision, recorded: bool) -> None:
        if not recorded:
            self.lost_claims += 1
        elif decision.attempt_status == "succeeded":
            self.delivered += 1
        elif decision.attempt_status == "retrying":
            self.retrying += 1
        else:
            self.failed += 1


@dataclass(frozen=True)
class Finished:
    """A POST that is over, waiting to be recorded."""

    row: Any
    attempt_number: int
    result: AttemptResult
    decision: Decision


class WebhookDeliverer:
    """Runs delivery rounds until ``stop`` is set; survives database outages."""

    def __init__(
        self,
        settings: WebhookSettings,
        engine: Engine,
        stop: threading.Event,
        policy: DestinationPolicy,
        box: SecretBox,
        notifications: PendingNotifications,
    ):
        self.settings = settings
        self.engine = engine
        self.stop = stop
        self.worker_id = str(uuid.uuid4())
        self.totals = DeliveryTotals()
        self.concurrency = settings.delivery_concurrency
        self.claim_seconds = claim_seconds(settings.timeout_seconds)
        self.targets = EndpointTargets(engine, box)
        self.clients = EndpointClients(
            policy, settings.timeout_seconds, settings.max_in_flight_per_endpoint
        )
        self.lanes = EndpointLanes(settings.max_in_flight_per_endpoint, HOLD_SECONDS)
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="webhook")
        self._in_flight: set[Future[None]] = set()
        self._stopping = False
        self._connection = KeptConnection(engine)  # the loop's, kept between turns
        self._lock = threading.Lock()
        self._freed = threading.Event()  # set when a delivery finishes
        self._finished: list[Finished] = []
        self._notifications = notifications

    @classmethod
    def from_settings(
        cls, settings: Settings, engine: Engine, stop: threading.Event
    ) -> WebhookDeliverer:
        """A deliverer on its group, under the environment's address policy and key rules."""
        webhooks = settings.webhooks
        return cls(
            webhooks,
            engine,
            stop,
            DestinationPolicy.from_settings(settings.environment, webhooks.allowed_cidrs),
            SecretBox(webhooks.encryption_key, settings.environment),
            PendingNotifications(settings.database.url),
        )

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> DeliveryTotals:
        """Deliver until ``stop``; then wait for the POSTs in flight to be recorded."""
        self._notifications.listen()
        while not self.stop.is_set():
            _, claimed = self.turn()
            if claimed == 0:
                self._wait_for_work()
        self._finish_in_flight()
        return self.totals

    def drain(self, deadline_seconds: float = 60.0) -> DeliveryTotals:
        """Deliver what is due now (and what that unblocks), then return (``--once``)."""
        ends = time.monotonic() + deadline_seconds
        while not self.stop.is_set() and time.monotonic() < ends:
            _, claimed = self.turn()
            if claimed == 0 and not self._busy() and not self._unrecorded():
                break
            if claimed == 0:
                self._wait_for_a_free_thread()
        self._finish_in_flight()
        return self.totals

    def turn(self, claim: bool = True) -> tuple[int, int]:
        """Record the outcomes of the POSTs finished so far, then claim due deliveries up to
        the threads' queue and hand them out: one transaction; (recorded, claimed).

        Recording writes the delivery rows (fenced by their claims), the attempt rows, each
        endpoint's health and the ``processed`` receipts. When the database is down the
        outcomes wait for the next turn (or their claims lapse and they are sent again: at
        least once).
        """
        with self._lock:
            batch, self._finished = self._finished, []
        released = self.lanes.released()
        free = self.concurrency * QUEUED_PER_THREAD - self.lanes.held() if claim else 0
        if not batch and not released and free <= 0:
            return 0, 0
        try:
            connection = self._connection.get()
            with connection.begin():
                recorded = self._record(connection, batch)
                repository.release_claims(connection, released)
                rows = self._claim(connection, free) if free > 0 else []
        except DBAPIError as exc:
            log.warning("a delivery turn failed: %s", first_line(exc))
            self._connection.discard()  # after an error its state is unknown
            with self._lock:
                self._finished[:0] = batch
            self.lanes.give_back(released)
            self.stop.wait(self.settings.poll_seconds)
            return 0, 0
        self.lanes.committed({done.row.delivery_id for done in batch})
        self._count(batch, recorded)
        self.lanes.add(rows)
        self._dispatch()
        return len(batch), len(rows)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.clients.close()
        self._notifications.close()
        self._connection.discard()

    def _dispatch(self) -> None:
        """Start the POSTs the lanes let go now."""
        if self._stopping:
            return
        for row in self.lanes.take():
            future = self._pool.submit(self.deliver, row)
            with self._lock:
                self._in_flight.add(future)
            future.add_done_callback(self._done)

    # -- one delivery --------------------------------------------------------------------

    def deliver(self, row: Any) -> None:
        """POST one claimed delivery; its outcome waits for the loop to record it, its slot
        and its customer's next event are free at once."""
        succeeded = False
        try:
            target = self.targets.get(row.endpoint_id)
            event = event_from_row(row)
            body = message_body(event)
            headers = delivery_headers(
                event.event_id, event.sequence, body, target.secret_keys, int(time.time())
            )
            with tracing.span(
                "webhook send",
                kind="client",
                attributes={"messaging.message.id": event.event_id, "url.full": target.url},
                parent=row.traceparent,  # the API request's, stored with the event
            ):
                headers.update(tracing.outgoing_headers())
                client = self.clients.client(str(row.endpoint_id))
                result = post(client, target.url, body, headers, self.clients.timeout)
            attempt_number = row.attempt_count + 1
            decision = decide(result, attempt_number, self.settings.retry_delays)
            count_attempt(decision.attempt_status, result.duration_ms)
            with self._lock:
                self._finished.append(Finished(row, attempt_number, result, decision))
            succeeded = result.succeeded
        except Exception:  # one delivery's bug must not kill the process; its claim lapses
            log.exception("delivery %s failed unexpectedly", row.delivery_id)
        finally:
            self.lanes.answered(row, succeeded)
        self._dispatch()

    def _count(self, batch: list[Finished], recorded: set[Any]) -> None:
        for done in batch:
            if done.row.delivery_id not in recorded:
                log.warning("claim on delivery %s was lost; outcome dropped", done.row.delivery_id)
            self.totals.count(done.decision, done.row.delivery_id in recorded)

    def _record(self, connection: Any, batch: list[Finished]) -> set[Any]:
        if not batch:
            return set()
        recorded = repository.record_attempts(
            connection,
            [_attempt_row(d.row, d.attempt_number, d.result, d.decision) for d in batch],
        )
        done = [d for d in batch if d.row.delivery_id in recorded]
        failing = {d.row.endpoint_id for d in done if not d.result.succeeded}
        # Endpoints that only succeeded take one statement; the others every outcome in
        # order (each failure counts towards the breaker, a success resets it).
        endpoints.record_healthy(connection, sorted({d.row.endpoint_id for d in done} - failing))
        for d in done:
            if d.row.endpoint_id in failing:
                self._record_health(connection, d.row, d.result, d.decision)
        succeeded = [d.row for d in done if d.result.succeeded]
        record_processed(
            connection, [(row.event_id, row.consumer_id, _receipt_detail(row)) for row in succeeded]
        )
        return recorded

    def _record_health(
        self, connection: Any, row: Any, result: AttemptResult, decision: Decision
    ) -> None:
        settings = self.settings
        health = endpoints.record_health(
            connection,
            row.endpoint_id,
            result.succeeded,
            settings.breaker_failures,
            settings.breaker_pause_seconds,
            settings.disable_after_hours * 3600,
        )
        if health is not None and health.disabled_now:
            _audit_disabled(connection, row, "failing", settings.disable_after_hours)
        gone = decision.disable_endpoint
        if gone and endpoints.disable_endpoint(connection, row.endpoint_id, "gone (HTTP 410)"):
            _audit_disabled(connection, row, "gone (HTTP 410)", None)

    # -- bookkeeping ---------------------------------------------------------------------

    def _claim(self, connection: Any, free: int) -> list[Any]:
        settings = self.settings
        return list(
            repository.claim_due(
                connection,
                self.worker_id,
                free,
                settings.max_in_flight_per_endpoint * HELD_PER_SLOT,
                settings.breaker_failures,
                self.claim_seconds,
            )
        )

    def _unrecorded(self) -> int:
        with self._lock:
            return len(self._finished)

    def _busy(self) -> int:
        return self.lanes.held()

    def _done(self, future: Future[None]) -> None:
        with self._lock:
            self._in_flight.discard(future)
        self._freed.set()

    def _wait_for_work(self) -> None:
        if self._busy():
            self._wait_for_a_free_thread()
        else:
            self._notifications.wait(self.settings.poll_seconds)

    def _wait_for_a_free_thread(self) -> None:
        """Until a delivery finishes (its endpoint may take the next one) or a short while
        (new events arrive meanwhile)."""
        self._freed.wait(BUSY_WAIT_SECONDS)
        self._freed.clear()

    def _finish_in_flight(self) -> None:
        """Start nothing more, wait for the POSTs under way, give the rest back, record."""
        self._stopping = True
        while True:
            with self._lock:
                pending = list(self._in_flight)
            if not pending:
                break
            for future in pending:
                future.result()
        self.lanes.release_all()
        self.turn(claim=False)
        self._stopping = False


def claim_seconds(timeout_seconds: float) -> float:
    """How long a claim lasts: longer than the slowest POST the timeout allows, plus a margin
    to record it, so a live process's claim never lapses under it."""
    return timeout_seconds * TIMEOUT_PHASES + CLAIM_MARGIN_SECONDS


def _attempt_row(
    row: Any, attempt_number: int, result: AttemptResult, decision: Decision
) -> dict[str, Any]:
    return {
        "delivery_id": row.delivery_id,
        "claim_token": row.claim_token,
        "delivery_status": decision.delivery_status,
        "attempt_number": attempt_number,
        "attempt_status": decision.attempt_status,
        "started_at": result.started_at,
        "duration_ms": result.duration_ms,
        "response_status": result.status_code,
        "response_body": result.body,
        "error": _error_of(result),
        "next_attempt_at": decision.next_attempt_at,
    }


def _receipt_detail(row: Any) -> str:
    return RECEIPT_DETAIL.format(endpoint_id=row.endpoint_id)


def _error_of(result: AttemptResult) -> str | None:
    if result.error is not None:
        return result.error
    if result.succeeded:
        return None
    return f"HTTP {result.status_code}"


def _audit_disabled(connection: Any, row: Any, reason: str, hours: float | None) -> None:
    detail: dict[str, Any] = {"endpoint_id": str(row.endpoint_id), "reason": reason}
    if hours is not None:
        detail["failing_for_hours"] = hours
    write_audit_in(
        connection,
        AuditEntry(
            actor="webhooks-deliver",
            action="webhook_endpoint_disabled",
            consumer_id=row.consumer_id,
            detail=detail,
        ),
    )
