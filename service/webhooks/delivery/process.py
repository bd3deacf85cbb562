"""``fintegrate webhooks deliver``: claim due deliveries, POST them signed, record outcomes.

One loop claims (repository.claim_due: heads of each customer per endpoint, within each
endpoint's cap) while a thread pool POSTs; each finished POST records its outcome in one
transaction: the delivery (fenced by its claim token), the attempt row, the endpoint's
health (breaker, auto-disable, with an audit row), and on 2xx the ``processed`` receipt the
queue channel writes too. Several processes may run: claims never overlap, and a killed
process's claims lapse after ``claim_seconds(timeout)`` and are sent again.
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

from service.config import Settings
from service.events.repository import record_receipt
from service.http.audit import AuditEntry, write_audit_in
from service.kit import tracing
from service.kit.errors import first_line
from service.messaging.messages import event_from_row, message_body
from service.messaging.publish.relay import PendingNotifications
from service.webhooks import repository as endpoints
from service.webhooks.delivery import repository
from service.webhooks.delivery.metrics import count_attempt
from service.webhooks.delivery.outcomes import AttemptResult, Decision, decide
from service.webhooks.delivery.sender import EndpointClients, delivery_headers, post
from service.webhooks.delivery.targets import EndpointTargets
from service.webhooks.destinations import DestinationPolicy
from service.webhooks.signing import SecretBox

log = logging.getLogger(__name__)

CLAIM_MARGIN_SECONDS = 10.0
# httpx's timeout bounds each phase (pool, connect, write, read), not the whole POST.
TIMEOUT_PHASES = 4
BUSY_WAIT_SECONDS = 0.02
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


class WebhookDeliverer:
    """Runs delivery rounds until ``stop`` is set; survives database outages."""

    def __init__(self, settings: Settings, engine: Engine, stop: threading.Event):
        self.settings = settings
        self.engine = engine
        self.stop = stop
        self.worker_id = str(uuid.uuid4())
        self.totals = DeliveryTotals()
        self.concurrency = settings.webhook_delivery_concurrency
        self.claim_seconds = claim_seconds(settings.webhook_timeout_seconds)
        policy = DestinationPolicy.from_settings(
            settings.environment, settings.webhook_allowed_cidrs
        )
        box = SecretBox(settings.webhook_encryption_key, settings.environment)
        self.targets = EndpointTargets(engine, box)
        self.clients = EndpointClients(
            policy, settings.webhook_timeout_seconds, settings.webhook_max_in_flight_per_endpoint
        )
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="webhook")
        self._in_flight: set[Future[None]] = set()
        self._lock = threading.Lock()
        self._notifications = PendingNotifications(settings.database_url)

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> DeliveryTotals:
        """Deliver until ``stop``; then wait for the POSTs in flight to be recorded."""
        self._notifications.listen()
        while not self.stop.is_set():
            claimed = self.claim_round()
            if claimed == 0:
                self._wait_for_work()
        self._finish_in_flight()
        return self.totals

    def drain(self, deadline_seconds: float = 60.0) -> DeliveryTotals:
        """Deliver what is due now (and what that unblocks), then return (``--once``)."""
        ends = time.monotonic() + deadline_seconds
        while not self.stop.is_set() and time.monotonic() < ends:
            claimed = self.claim_round()
            if claimed == 0 and not self._busy():
                break
            if claimed == 0:
                time.sleep(BUSY_WAIT_SECONDS)
        self._finish_in_flight()
        return self.totals

    def claim_round(self) -> int:
        """Claim as many due deliveries as there are free threads and hand them out."""
        free = self.concurrency - self._busy()
        if free <= 0:
            return 0
        try:
            rows = self._claim(free)
        except DBAPIError as exc:
            log.warning("claiming deliveries failed: %s", first_line(exc))
            self.stop.wait(self.settings.webhook_poll_seconds)
            return 0
        for row in rows:
            future = self._pool.submit(self.deliver, row)
            with self._lock:
                self._in_flight.add(future)
            future.add_done_callback(self._done)
        return len(rows)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.clients.close()
        self._notifications.close()

    # -- one delivery --------------------------------------------------------------------

    def deliver(self, row: Any) -> None:
        """POST one claimed delivery and record what happened."""
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
                result = post(self.clients.client(str(row.endpoint_id)), target.url, body, headers)
            attempt_number = row.attempt_count + 1
            decision = decide(result, attempt_number, self.settings.webhook_retry_delays)
            recorded = self.record(row, attempt_number, result, decision)
            self.totals.count(decision, recorded)
            count_attempt(decision.attempt_status, result.duration_ms)
        except Exception:  # one delivery's bug must not kill the process; its claim lapses
            log.exception("delivery %s failed unexpectedly", row.delivery_id)

    def record(
        self, row: Any, attempt_number: int, result: AttemptResult, decision: Decision
    ) -> bool:
        """One transaction: the delivery (fenced), the attempt, the endpoint, the receipt."""
        with self.engine.begin() as connection:
            attempt = _attempt_row(row, attempt_number, result, decision)
            if not repository.record_attempt(connection, attempt):
                log.warning("claim on delivery %s was lost; outcome dropped", row.delivery_id)
                return False
            self._record_health(connection, row, result, decision)
            if result.succeeded:
                detail = RECEIPT_DETAIL.format(endpoint_id=row.endpoint_id)
                record_receipt(connection, row.event_id, row.consumer_id, "processed", detail)
        return True

    def _record_health(
        self, connection: Any, row: Any, result: AttemptResult, decision: Decision
    ) -> None:
        settings = self.settings
        health = endpoints.record_health(
            connection,
            row.endpoint_id,
            result.succeeded,
            settings.webhook_breaker_failures,
            settings.webhook_breaker_pause_seconds,
            settings.webhook_disable_after_hours * 3600,
        )
        if health is not None and health.disabled_now:
            _audit_disabled(connection, row, "failing", settings.webhook_disable_after_hours)
        gone = decision.disable_endpoint
        if gone and endpoints.disable_endpoint(connection, row.endpoint_id, "gone (HTTP 410)"):
            _audit_disabled(connection, row, "gone (HTTP 410)", None)

    # -- bookkeeping ---------------------------------------------------------------------

    def _claim(self, free: int) -> list[Any]:
        settings = self.settings
        with self.engine.begin() as connection:
            return list(
                repository.claim_due(
                    connection,
                    self.worker_id,
                    free,
                    settings.webhook_max_in_flight_per_endpoint,
                    settings.webhook_breaker_failures,
                    self.claim_seconds,
                )
            )

    def _busy(self) -> int:
        with self._lock:
            return len(self._in_flight)

    def _done(self, future: Future[None]) -> None:
        with self._lock:
            self._in_flight.discard(future)

    def _wait_for_work(self) -> None:
        if self._busy():
            self._notifications.wait(BUSY_WAIT_SECONDS)
        else:
            self._notifications.wait(self.settings.webhook_poll_seconds)

    def _finish_in_flight(self) -> None:
        with self._lock:
            pending = list(self._in_flight)
        for future in pending:
            future.result()


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
