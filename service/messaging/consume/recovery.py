"""Events the queue no longer holds, fetched from the API (which holds the truth), in order.

A tenant queue loses messages by design: past ``x-message-ttl`` or ``x-max-length``
RabbitMQ dead-letters them (reason ``expired`` / ``maxlen``), and the worker itself acks
a customer's messages unhandled once that customer has ``max_in_hand`` in hand. None of
that loses an event, because the outbox still lists it as undelivered:

- **gap**: a message whose sequence is past the aggregate's last delivered + 1 is handled
  only after the events between, fetched with ``GET /events/after-sequence``;
- **owed**: an aggregate whose events through a sequence must come from the API (past its
  in-hand cap, named by a lost dead letter, or found by the tail sweep) gets one recovery
  item in its lane, which fetches and handles them in sequence order; while it is owed,
  the aggregate's further messages are acked unhandled and added to what it is owed;
- **sweeps** (at start, then every ``worker_recovery_interval_seconds``): the DLQ's
  ``expired`` / ``maxlen`` letters are taken off (their aggregates become owed; handler
  failures and poison stay), and ``GET /events/lost`` names the events published longer
  ago than the queue's TTL and still undelivered.

Each recovered event goes through the same stale check as a queue message, in its
aggregate's lane, so the handler sees every event once per aggregate order.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from service.messaging.consume.poison import decode_message
from service.messaging.consume.receipts import DeliveredSequences, DeliveryConfirmer
from service.messaging.messages import EventMessage, InvalidMessage, message_from_event

log = logging.getLogger(__name__)

AFTER_SEQUENCE_PATH = "/events/after-sequence"
LOST_PATH = "/events/lost"
LOST_REASONS = frozenset({"expired", "maxlen"})
PAGE_SIZE = 100
LOST_PAGE_SIZE = 500
LOST_MAX_PAGES = 100  # per sweep; the next sweep goes on from the oldest again
SWEEP_MAX_LETTERS = 1000
# Added to the queue TTL before an undelivered event counts as lost: the broker enqueues a
# message before the relay records published_at, and the two clocks may differ a little.
TTL_MARGIN_MS = 2000
TAIL_KEY = "~lost-events"  # the tail sweep's lane; never an aggregate key (no UUID)

Recovered = tuple[EventMessage, str]  # the event and its deliver_status


@dataclass
class OwedRange:
    """An aggregate whose events through ``through`` must come from the API."""

    customer_id: str | None
    through: int


class Owed:
    """Aggregates owed events (thread-safe); each has at most one recovery item scheduled."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owed: dict[str, OwedRange] = {}

    def owe(self, key: str, customer_id: str | None, through: int) -> bool:
        """Note ``key`` owed through ``through``; True when its recovery must be scheduled."""
        with self._lock:
            entry = self._owed.get(key)
            if entry is None:
                self._owed[key] = OwedRange(customer_id, through)
                return True
            entry.through = max(entry.through, through)
            return False

    def owes(self, key: str) -> bool:
        with self._lock:
            return key in self._owed

    def target(self, key: str) -> OwedRange | None:
        with self._lock:
            entry = self._owed.get(key)
            return None if entry is None else OwedRange(entry.customer_id, entry.through)

    def settle(self, key: str, through: int) -> bool:
        """Forget ``key`` if nothing past ``through`` was owed meanwhile; True when forgotten."""
        with self._lock:
            entry = self._owed.get(key)
            if entry is not None and entry.through > through:
                return False
            self._owed.pop(key, None)
            return True

    def aggregates(self) -> list[str]:
        with self._lock:
            return list(self._owed)


class InHand:
    """Messages per aggregate taken off the current channel and not finished (thread-safe)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._lock = threading.Lock()
        self._epoch = 0
        self._counts: dict[str, int] = {}

    def reset(self, epoch: int) -> None:
        """A new channel: what the old one held is redelivered, not in hand."""
        with self._lock:
            self._epoch = epoch
            self._counts.clear()

    def take(self, key: str, epoch: int) -> bool:
        """Count one more message of ``key`` in hand; False when it is at the cap."""
        with self._lock:
            held = self._counts.get(key, 0)
            if epoch != self._epoch or held >= self.cap:
                return False
            self._counts[key] = held + 1
            return True

    def release(self, key: str, epoch: int) -> None:
        with self._lock:
            if epoch != self._epoch or key not in self._counts:
                return
            self._counts[key] -= 1
            if not self._counts[key]:
                del self._counts[key]


class EventFetcher:
    """The worker's recovery reads, through the API client that confirms receipts."""

    def __init__(self, confirmer: DeliveryConfirmer, consumer_name: str) -> None:
        self._confirmer = confirmer
        self._consumer_name = consumer_name

    def after(self, customer_id: str | None, after: int, through: int) -> list[Recovered] | None:
        """The aggregate's events in ``(after, through]``, a page; None when stopping."""
        params: dict[str, Any] = {
            "after_sequence": after,
            "through_sequence": through,
            "limit": PAGE_SIZE,
        }
        if customer_id is not None:
            params["customer_id"] = customer_id
        return self._events(AFTER_SEQUENCE_PATH, params)

    def lost(
        self, older_than_ms: int, cursor: str | None = None
    ) -> tuple[list[Recovered], str | None] | None:
        """A page of the published events undelivered for longer than ``older_than_ms`` and
        the cursor of the next; None when stopping."""
        params: dict[str, Any] = {"older_than_ms": older_than_ms, "limit": LOST_PAGE_SIZE}
        if cursor is not None:
            params["cursor"] = cursor
        data = self._read(LOST_PATH, params)
        if data is None:
            return None
        return self._messages(data), data.get("next_cursor")

    def _events(self, path: str, params: dict[str, Any]) -> list[Recovered] | None:
        data = self._read(path, params)
        return None if data is None else self._messages(data)

    def _read(self, path: str, params: dict[str, Any]) -> Any | None:
        try:
            return self._confirmer.read(path, params)
        except ValueError as exc:  # a message with a bogus customer or sequence: nothing to fetch
            log.warning("cannot recover events: %s", exc)
            return {"items": []}

    def _messages(self, data: Any) -> list[Recovered]:
        return [
            (message_from_event(item, self._consumer_name), str(item["deliver_status"]))
            for item in data["items"]
        ]


class Recovery:
    """Fills gaps and recovers owed aggregates, handing each event to ``handle`` in order.

    ``handle`` runs one recovered event in its lane (stale check, handler, receipt) and
    answers False when the worker is stopping; ``schedule`` puts work in an aggregate's lane.
    """

    def __init__(
        self,
        fetcher: EventFetcher,
        sequences: DeliveredSequences,
        handle: Callable[[EventMessage], bool],
        schedule: Callable[[str, Callable[[], None]], None],
        lost_after_ms: int,
    ) -> None:
        self.owed = Owed()
        self._fetcher = fetcher
        self._sequences = sequences
        self._handle = handle
        self._schedule = schedule
        self._lost_after_ms = lost_after_ms + TTL_MARGIN_MS
        self._tail_busy = threading.Event()

    def fill_gap(self, message: EventMessage, last: int) -> bool:
        """Handle the events between ``last`` and ``message``; False when stopping."""
        if message.sequence is None or message.sequence <= last + 1:
            return True
        log.info(
            "event %s: sequence %d after last delivered %d; fetching the %d between",
            message.event_id,
            message.sequence,
            last,
            message.sequence - last - 1,
        )
        return self._recover_range(message.customer_id, last, message.sequence - 1)

    def owe(self, key: str, customer_id: str | None, through: int) -> None:
        """``key``'s events through ``through`` come from the API, in its lane."""
        if self.owed.owe(key, customer_id, through):
            self._schedule(key, partial(self.recover_owed, key))

    def reschedule(self) -> None:
        """After the lanes were dropped (a new channel): schedule every owed aggregate again."""
        self._tail_busy.clear()
        for key in self.owed.aggregates():
            self._schedule(key, partial(self.recover_owed, key))

    def recover_owed(self, key: str) -> None:
        """In ``key``'s lane: fetch and handle what it is owed, until nothing more is."""
        entry = self.owed.target(key)
        while entry is not None:
            last = self._sequences.last_of(key, entry.customer_id)
            if last is None or not self._recover_range(entry.customer_id, last, entry.through):
                return  # stopping: still owed; the outbox keeps the events undelivered
            if self.owed.settle(key, entry.through):
                return
            entry = self.owed.target(key)

    def sweep_tail(self) -> None:
        """Schedule the lost tail once (on a lane thread: it asks the API)."""
        if self._tail_busy.is_set():
            return
        self._tail_busy.set()
        self._schedule(TAIL_KEY, self._recover_tail)

    def _recover_tail(self) -> None:
        """Every aggregate with an event older than the TTL and undelivered becomes owed."""
        cursor: str | None = None
        try:
            for _ in range(LOST_MAX_PAGES):
                page = self._fetcher.lost(self._lost_after_ms, cursor)
                if page is None:
                    return
                lost, cursor = page
                for message, _ in lost:
                    if message.sequence is not None:
                        self.owe(message.aggregate_key, message.customer_id, message.sequence)
                if lost:
                    log.info("%d events older than the queue TTL are undelivered", len(lost))
                if cursor is None:
                    return
        finally:
            self._tail_busy.clear()

    def _recover_range(self, customer_id: str | None, after: int, through: int) -> bool:
        while after < through:
            page = self._fetcher.after(customer_id, after, through)
            if page is None:
                return False
            if not page:
                return True
            for message, deliver_status in page:
                # only events without a receipt: a handler failure stays failed (its message
                # went to the DLQ, or `events redeliver` retries it), as from the queue
                if deliver_status == "pending" and not self._handle(message):
                    return False
            after = page[-1][0].sequence or through
        return True


def death_reason(headers: dict[str, Any] | None) -> str | None:
    """Why RabbitMQ dead-lettered a message last (``x-death``, most recent first)."""
    deaths = (headers or {}).get("x-death")
    if not isinstance(deaths, list) or not deaths or not isinstance(deaths[0], dict):
        return None
    reason = deaths[0].get("reason")
    return reason.decode() if isinstance(reason, bytes) else reason


def sweep_lost_letters(
    connection: Any, dlq: str, on_lost: Callable[[EventMessage], bool]
) -> tuple[int, bool]:
    """On the connection's thread: take the DLQ's ``expired`` / ``maxlen`` letters off once
    ``on_lost`` noted each (True); the others (handler failures, poison) go back as they were.

    Looks at no more letters than the DLQ held at the start (at most SWEEP_MAX_LETTERS).
    Returns how many were taken off, and whether letters were left unseen past the limit.
    """
    channel = connection.channel()
    taken = seen = 0
    depth = 1
    try:
        while seen < min(depth, SWEEP_MAX_LETTERS):
            method, properties, body = channel.basic_get(dlq)
            if method is None:
                break
            depth = max(depth, seen + 1 + method.message_count)
            seen += 1
            if death_reason(properties.headers) not in LOST_REASONS:
                continue
            try:
                message = decode_message(body)
            except InvalidMessage:
                continue
            if not on_lost(message):
                continue
            channel.basic_ack(method.delivery_tag)
            taken += 1
    finally:
        if channel.is_open:
            channel.close()  # the letters left unacked go back to the DLQ
    return taken, depth > SWEEP_MAX_LETTERS and taken > 0
