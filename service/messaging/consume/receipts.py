"""Delivery receipts from the worker, through the API, with patient retries.

``POST /events/confirm-deliveries`` records the receipts of many lanes in one call
(``receipt_batches``); a receipt sent while a trace context is active goes alone through
``POST /events/confirm-delivery``, so it carries its own ``traceparent``.

``GET /events/last-delivered`` tells the highest delivered sequence of an aggregate, which
``DeliveredSequences`` caches so the worker can recognise a stale duplicate (an event at
or below it) without a handler call. Every aggregate the worker has not seen yet is looked
up once (batched), copy or not: its last delivered sequence tells a stale copy and a gap
(events the queue lost) apart from the next event. The one exception is an aggregate's
sequence 1 arriving as a first copy after the worker started (``consumer.FirstCopies``):
no gap can precede it and a copy this worker handled is in the cache, so the cache alone
answers (0 when it does not know it).
"""

from __future__ import annotations

import enum
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from service.kit.json_http import HttpTransportError, JsonHttp, JsonResponse
from service.kit.tracing import outgoing_headers
from service.messaging.connection import Backoff
from service.messaging.consume.receipt_batches import PendingReceipt, ReceiptBatches
from service.messaging.messages import EventMessage

log = logging.getLogger(__name__)

CONFIRM_PATH = "/events/confirm-delivery"
CONFIRM_BATCH_PATH = "/events/confirm-deliveries"
RECEIPT_BATCH = 100  # the API's limit per call (delivery.schemas.MAX_RECEIPTS_PER_CALL)
LAST_DELIVERED_PATH = "/events/last-delivered"
CACHED_AGGREGATES = 10_000
LOOKUP_BATCH = 100  # the API's limit per look-up
T = TypeVar("T")
HTTP_TIMEOUT_SECONDS = 5.0
MAX_RETRY_DELAY_SECONDS = 10.0


class Receipt(enum.Enum):
    """How a confirmation ended."""

    RECORDED = "recorded"  # 200: stored now or before (duplicate)
    REFUSED = "refused"  # 4xx: unknown to this tenant (404) or invalid; retrying cannot help
    ABANDONED = "abandoned"  # stopping while the API was unavailable: leave unacked


class WorkerUnauthorized(Exception):
    """The API refuses this worker's credentials (401/403): the worker must stop."""


class DeliveryConfirmer:
    """Confirms events as one tenant; retries 429, 5xx and transport errors until ``stop``."""

    def __init__(
        self,
        api_url: str,
        api_key: str,
        stop: threading.Event,
        sleep: Callable[[float], None] | None = None,
    ):
        self.stop = stop
        self._sleep = sleep or stop.wait
        self._http = JsonHttp(  # keeps its connections alive between calls
            api_url,
            {"X-API-Key": api_key, "User-Agent": "fintegrate-consumer"},
            HTTP_TIMEOUT_SECONDS,
        )
        self._batches = ReceiptBatches(self._send_batch, RECEIPT_BATCH, Receipt.ABANDONED)
        self._batching = True  # until the API turns out not to have the batch endpoint

    @property
    def batches_sent(self) -> int:
        """Batches handed to the API so far (each one call, retries aside)."""
        return self._batches.batches

    def close(self) -> None:
        self._batches.close()
        self._http.close()

    def confirm(self, event_id: str, status: str, detail: str | None = None) -> Receipt:
        """Record the receipt; blocks with bounded backoff while the API is unavailable.

        Thread-safe: receipts of concurrent callers share one call, unless a trace context
        is active (the receipt then goes alone and carries its ``traceparent``).
        """
        body = {"event_id": event_id, "status": status, "detail": detail}
        headers = outgoing_headers()
        if headers or not self._batching:
            return self._confirm_alone(body, headers)
        outcome: Receipt = self._batches.put(body)
        return outcome

    def _confirm_alone(
        self, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> Receipt:
        return self._patiently(lambda: self._attempt(body, headers)) or Receipt.ABANDONED

    def _send_batch(self, batch: list[PendingReceipt]) -> None:
        """On the sender thread: one call for ``batch``, retried like a single receipt."""
        bodies = [pending.body for pending in batch]
        answer = self._patiently(lambda: self._attempt_batch(bodies))
        for pending in batch:
            if answer is None:
                pending.outcome = Receipt.ABANDONED
            else:  # a receipt the answer does not cover goes alone
                found = answer.get(_canonical(pending.body["event_id"]))
                pending.outcome = found or self._confirm_alone(pending.body)

    def last_delivered(self, customer_ids: list[str | None]) -> dict[str | None, int] | None:
        """Highest delivered sequence (0: none) per customer; None when stopping first.

        ``None`` in ``customer_ids`` stands for the tenant's consumer-level aggregate; a
        customer_id that is no UUID answers 0 unasked (its receipt will be refused anyway).
        """
        valid = [c for c in customer_ids if c is not None and _is_uuid(c)]
        body = {"customer_ids": valid, "include_consumer": None in customer_ids}
        found = self._patiently(lambda: self._look_up(body))
        if found is None:
            return None
        return {c: found.get(c, 0) for c in customer_ids}

    def read(self, path: str, params: dict[str, Any]) -> Any | None:
        """``data`` of a GET, retried while the API is unavailable; None when stopping first.

        A 4xx other than 401/403 raises ValueError: the request itself is wrong.
        """
        return self._patiently(lambda: self._get(path, params))

    def _get(self, path: str, params: dict[str, Any]) -> Any | None:
        try:
            response = self._http.get(path, params)
        except HttpTransportError as exc:
            log.warning("GET %s failed: %r; retrying", path, exc)
            return None
        if response.status_code == 200:
            return response.json()["data"]
        _refuse_credentials(response)
        if response.status_code == 429 or response.status_code >= 500:
            log.warning("GET %s answered %s; retrying", path, response.status_code)
            return None
        raise ValueError(f"GET {path} refused ({response.status_code}): {_description(response)}")

    def _patiently(self, attempt: Callable[[], T | None]) -> T | None:
        """``attempt`` until it answers; None when ``stop`` is set first."""
        backoff = Backoff(initial=0.2, maximum=MAX_RETRY_DELAY_SECONDS)
        while True:
            outcome = attempt()
            if outcome is not None:
                return outcome
            if self.stop.is_set():
                return None
            self._sleep(backoff.next_delay())
            if self.stop.is_set():
                return None

    def _look_up(self, body: dict[str, Any]) -> dict[str | None, int] | None:
        """One POST: customer_id (None: consumer level) -> sequence, or None to retry."""
        try:
            response = self._http.post(LAST_DELIVERED_PATH, body)
        except HttpTransportError as exc:
            log.warning("last-delivered look-up failed: %r; retrying", exc)
            return None
        if response.status_code == 200:
            items = response.json()["data"]["items"]
            found = {item["aggregate_id"]: int(item["sequence"]) for item in items}
            if body["include_consumer"]:
                found[None] = int(items[-1]["sequence"])
            return found
        _refuse_credentials(response)
        if response.status_code == 429 or response.status_code >= 500:
            log.warning("last-delivered answered %s; retrying", response.status_code)
            return None
        log.warning(
            "last-delivered refused the look-up (%s): %s; handling without the stale check",
            response.status_code,
            _description(response),
        )
        return {}

    def _attempt_batch(self, bodies: list[dict[str, Any]]) -> dict[str, Receipt] | None:
        """One POST of several receipts: event id -> outcome (empty when the API refuses
        the batch as a whole, so each receipt goes alone), or None to retry."""
        try:
            response = self._http.post(CONFIRM_BATCH_PATH, {"receipts": bodies})
        except HttpTransportError as exc:
            log.warning("confirm-deliveries (%d) failed: %r; retrying", len(bodies), exc)
            return None
        if response.status_code == 200:
            data = response.json()["data"]
            outcomes = {item["event_id"]: Receipt.RECORDED for item in data["items"]}
            for event_id in data["not_found"]:
                log.error("confirm-deliveries refused %s: not found", event_id)
                outcomes[event_id] = Receipt.REFUSED
            return outcomes
        _refuse_credentials(response)
        if response.status_code == 429 or response.status_code >= 500:
            log.warning("confirm-deliveries answered %s; retrying", response.status_code)
            return None
        if response.status_code in (404, 405):  # an API from before the batch endpoint
            log.warning("the API has no %s; sending receipts one by one", CONFIRM_BATCH_PATH)
            self._batching = False
        else:
            log.warning(
                "confirm-deliveries refused a batch (%s): %s; sending its receipts one by one",
                response.status_code,
                _description(response),
            )
        return {}

    def _attempt(
        self, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> Receipt | None:
        """One POST: the outcome, or None when it is worth retrying."""
        try:
            response = self._http.post(CONFIRM_PATH, body, headers or None)
        except HttpTransportError as exc:
            log.warning("confirm-delivery for %s failed: %r; retrying", body["event_id"], exc)
            return None
        if response.status_code == 200:
            return Receipt.RECORDED
        _refuse_credentials(response)
        if response.status_code == 429 or response.status_code >= 500:
            log.warning("confirm-delivery answered %s; retrying", response.status_code)
            return None
        log.error(
            "confirm-delivery refused %s (%s): %s",
            body["event_id"],
            response.status_code,
            _description(response),
        )
        return Receipt.REFUSED


class DeliveredSequences:
    """Last delivered sequence per aggregate: a bounded LRU, filled from the API on a miss.

    ``expect`` (on arrival) notes aggregates that will be needed; a miss then asks for up to
    ``LOOKUP_BATCH`` of them in one call, and lanes missing an aggregate that is being
    looked up wait for that answer. The worker updates the cache with its own confirmations;
    an evicted aggregate is asked again. Thread-safe.
    """

    def __init__(
        self,
        look_up: Callable[[list[str | None]], dict[str | None, int] | None],
        capacity: int = CACHED_AGGREGATES,
    ):
        self._look_up = look_up
        self._capacity = capacity
        self._changed = threading.Condition()
        self._known: OrderedDict[str, int] = OrderedDict()
        self._wanted: dict[str, str | None] = {}  # aggregate key -> customer_id, not asked yet
        self._asking: set[str] = set()
        self.look_ups = 0  # calls made to the API (each for up to LOOKUP_BATCH aggregates)

    def expect(self, message: EventMessage) -> None:
        """``message`` will be checked soon: include its aggregate in the next look-up."""
        if message.sequence is None:
            return
        key = message.aggregate_key
        with self._changed:
            if key not in self._known and key not in self._asking:
                self._wanted[key] = message.customer_id

    def last_delivered(self, message: EventMessage, ask: bool = True) -> int | None:
        """The sequence to compare with (0 for a message without one); None when stopping.

        ``ask=False`` answers from the cache alone, 0 when unknown.
        """
        if message.sequence is None:
            return 0
        return self.last_of(message.aggregate_key, message.customer_id, ask)

    def last_of(self, key: str, customer_id: str | None, ask: bool = True) -> int | None:
        """The aggregate's last delivered sequence, cached or asked; None when stopping."""
        with self._changed:
            while key in self._asking:
                self._changed.wait()
            if key in self._known:
                self._known.move_to_end(key)
                return self._known[key]
            if not ask:
                return 0
            batch = self._take_batch(key, customer_id)
            self.look_ups += 1
        found = None
        try:
            found = self._look_up(list(batch.values()))
        finally:
            self._settle_batch(batch, found)
        return None if found is None else found.get(customer_id, 0)

    def confirmed(self, message: EventMessage) -> None:
        """``message`` is delivered now: its sequence is the aggregate's last, if higher."""
        if message.sequence is not None:
            with self._changed:
                self._remember(message.aggregate_key, message.sequence)

    def _take_batch(self, key: str, customer_id: str | None) -> dict[str, str | None]:
        """``key`` and up to LOOKUP_BATCH - 1 other wanted aggregates, marked as asked."""
        self._wanted.pop(key, None)
        batch = {key: customer_id}
        while self._wanted and len(batch) < LOOKUP_BATCH:
            other, other_customer = self._wanted.popitem()
            if other not in self._known and other not in self._asking:
                batch[other] = other_customer
        self._asking.update(batch)
        return batch

    def _settle_batch(
        self, batch: dict[str, str | None], found: dict[str | None, int] | None
    ) -> None:
        with self._changed:
            self._asking.difference_update(batch)
            if found is not None:
                for key, customer_id in batch.items():
                    self._remember(key, found.get(customer_id, 0))
            self._changed.notify_all()

    def _remember(self, key: str, sequence: int) -> None:
        """Under the lock: store ``sequence`` if higher, evicting the least recent."""
        self._known[key] = max(sequence, self._known.get(key, 0))
        self._known.move_to_end(key)
        while len(self._known) > self._capacity:
            self._known.popitem(last=False)


def _refuse_credentials(response: JsonResponse) -> None:
    """Raise WorkerUnauthorized on 401/403."""
    if response.status_code in (401, 403):
        raise WorkerUnauthorized(
            f"API refused the worker's key ({response.status_code}): "
            f"{_description(response)}; set FINTEGRATE_API_KEY to this tenant's active key"
        )


def _description(response: JsonResponse) -> str:
    try:
        return str(response.json()["detail"]["status_description"])
    except (ValueError, KeyError, TypeError):
        return response.reason_phrase


def _canonical(event_id: str) -> str:
    """``event_id`` as the API writes it (lower-case, hyphenated) when it is a UUID."""
    try:
        return str(uuid.UUID(event_id))
    except ValueError:
        return event_id


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
