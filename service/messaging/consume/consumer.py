"""The event consumer worker: one tenant queue in, handler, receipt through the API, ack.

For each message: parse it (unparseable → DLQ, no API call), then in its aggregate's lane
(``lanes.KeyedLanes``: in sequence order within an aggregate, in parallel across aggregates)
either skip it as a *stale duplicate* — its sequence is at or below the last one delivered
for its aggregate (``receipts.DeliveredSequences``; asked from the API once per aggregate
the worker has not seen, batched, unless the message opens it) — with a ``received`` receipt
and no handler call, or call the handler (after the events of a gap, fetched from the API:
``recovery``); record the receipt (``processed``, or ``failed`` when the handler raised);
then ack on the connection's thread — or reject to the DLQ after a ``failed`` receipt. The
next event of an aggregate starts only once the previous one's receipt is recorded, and
nothing is acked before its receipt is. While the API is unavailable the worker retries with
bounded backoff; when asked to stop then, it leaves the message unacked and RabbitMQ
redelivers it. A lost broker connection is reopened with bounded backoff: events of the old
channel not started yet are dropped (unacked, the broker redelivers them in order).

What the queue lost (TTL, max length) and what the worker acks unhandled past a customer's
in-hand cap (``FINTEGRATE_WORKER_MAX_IN_HAND_PER_CUSTOMER``) is fetched from the API in
each aggregate's order (``recovery.Recovery``); the hooks here are ``_owe_past_cap`` (on
arrival), ``_sweep_if_due`` (lost dead letters and the tail, on the connection's thread)
and ``_handle_recovered`` (in the lane).

The worker consumes exclusively by default: a second worker on the same queue stands by,
retrying, until the first one's connection is gone (ordering across competing consumers is
impossible). Delivery is at least once; receipts are idempotent per event_id.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import pika.exceptions

from service.messaging import topology
from service.messaging.connection import BROKER_ERRORS, Backoff, BrokerUnavailable, open_blocking
from service.messaging.consume.config import WorkerConfig
from service.messaging.consume.deliveries import Delivery, Outcome, Unsettled
from service.messaging.consume.lanes import KeyedLanes
from service.messaging.consume.poison import call_handler, decode_message, describe_failure
from service.messaging.consume.receipts import (
    DeliveredSequences,
    DeliveryConfirmer,
    Receipt,
    WorkerUnauthorized,
)
from service.messaging.consume.recovery import (
    EventFetcher,
    InHand,
    Recovery,
    sweep_lost_letters,
)
from service.messaging.messages import EventMessage, InvalidMessage, may_be_duplicate
from service.messaging.tracing import handler_span, traced_delivery

log = logging.getLogger(__name__)

Handler = Callable[[EventMessage], Any]
INACTIVITY_SECONDS = 0.5
SETTLE_POLL_SECONDS = 0.1
SHUTDOWN_GRACE_SECONDS = 10.0
MAX_HANDLER_THREADS = 16
MAX_RECONNECT_DELAY_SECONDS = 10.0
STANDBY_RETRY_SECONDS = 2.0
RECONNECT_ERRORS: tuple[type[BaseException], ...] = (BrokerUnavailable, *BROKER_ERRORS)
ACCESS_REFUSED = 403


def log_event(message: EventMessage) -> None:
    """The default handler: log the event, never its payload (personal data; issue 24)."""
    log.info(
        "event %s %s customer=%s sequence=%s payload fields=%s",
        message.event_type,
        message.event_id,
        message.customer_id,
        message.sequence,
        sorted(message.payload),
    )


def load_handler(spec: str) -> Handler:
    """The callable named ``module:function``; ValueError with the reason otherwise."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"handler {spec!r} must look like module:function")
    try:
        handler = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"handler {spec!r} cannot be loaded: {exc}") from exc
    if not callable(handler):
        raise ValueError(f"handler {spec!r} is not callable")
    return handler


def stale_detail(sequence: int, last_delivered: int) -> str:
    """The receipt detail of a skipped stale duplicate."""
    return (
        f"stale duplicate: sequence {sequence} <= last delivered {last_delivered}; "
        "handler not called"
    )


class FirstCopies:
    """Which deliveries open their aggregate: sequence 1, first copy, arrived fresh.

    Such a message needs no last-delivered look-up: no gap can precede it, and a copy of
    it handled earlier by this worker is in the cache. A copy handled by a previous worker
    is the one case the cache misses (an unmarked copy can exist: a frame of a relay
    that lost its lease, a relay racing a resend); such copies were queued before this
    worker started, so the messages the queue held then are looked up as before. Used on
    the connection's thread only.
    """

    def __init__(self) -> None:
        self._delivered = False
        self._held_at_start = 0  # messages queued before this worker's first delivery

    def started(self, channel: Any, queue: str) -> None:
        """On each new channel until a first delivery (a standby worker waits long): count
        what a previous worker may have left."""
        if not self._delivered:
            declared = channel.queue_declare(queue, passive=True)
            self._held_at_start = int(declared.method.message_count)

    def opens_aggregate(self, message: EventMessage, copy: bool) -> bool:
        """Whether ``message`` (a possible ``copy`` or not) opens its aggregate."""
        self._delivered = True
        if self._held_at_start:  # still among the messages queued before this worker
            self._held_at_start -= 1
            return False
        return message.sequence == 1 and not copy


@dataclass
class ConsumerStats:
    """What the worker did."""

    processed: int = 0
    failed: int = 0
    poison: int = 0
    refused: int = 0
    stale: int = 0
    recovered: int = 0  # handled from the API: lost by the queue, or owed past the cap
    owed: int = 0  # acked unhandled past a customer's in-hand cap, fetched later
    lost_letters: int = 0  # expired / overflowed dead letters taken off the DLQ


class EventConsumer:
    """Consumes ``customer_notification_{name}`` until ``stop`` is set.

    Handlers run on up to ``concurrency`` threads (default ``min(prefetch, 16)``), one
    aggregate at a time per lane, so a handler must be thread-safe when concurrency > 1.
    Each ack or reject is handed back to the connection's thread once the receipt is
    recorded. ``exclusive`` makes a second worker on the queue stand by.
    """

    def __init__(
        self,
        config: WorkerConfig,
        consumer_name: str,
        stop: threading.Event,
        handler: Handler = log_event,
        prefetch: int | None = None,
        confirmer: DeliveryConfirmer | None = None,
        concurrency: int | None = None,
        exclusive: bool = True,
    ):
        if confirmer is None and not config.api_key:
            raise ValueError(
                "FINTEGRATE_API_KEY (this tenant's key) is required to confirm delivery"
            )
        self.config = config
        self.consumer_name = consumer_name
        self.queue = topology.queue_name(consumer_name)
        self.dlq = topology.dlq_name(consumer_name)
        self.stop = stop
        self.handler = handler
        self.prefetch = prefetch or config.prefetch
        self.concurrency = concurrency or min(self.prefetch, MAX_HANDLER_THREADS)
        self.exclusive = exclusive
        self.stats = ConsumerStats()
        self.confirmer = confirmer or DeliveryConfirmer(config.api_url, config.api_key or "", stop)
        self.sequences = DeliveredSequences(self.confirmer.last_delivered)
        self._lanes = KeyedLanes(self.concurrency, self._fail, thread_name_prefix="handler")
        # Recovery needs one worker per queue: a shared worker cannot tell a gap from
        # events another worker holds, so it keeps the plain path.
        self.recovering = exclusive
        self._in_hand = InHand(config.max_in_hand_per_customer)
        self.recovery = Recovery(
            EventFetcher(self.confirmer, consumer_name),
            self.sequences,
            self._handle_recovered,
            self._lanes.submit,
            config.message_ttl_ms,
        )
        self._first_copies = FirstCopies()
        self._next_sweep = 0.0
        self._stats_lock = threading.Lock()
        self._unsettled = Unsettled()
        self._fatal: BaseException | None = None
        self._standing_by = False

    def run(self) -> ConsumerStats:
        """Consume, reconnecting with bounded backoff, until stopped."""
        backoff = Backoff(initial=0.2, maximum=MAX_RECONNECT_DELAY_SECONDS)
        log.info(
            "consuming %s (prefetch %d, concurrency %d%s)",
            self.queue,
            self.prefetch,
            self.concurrency,
            ", exclusive" if self.exclusive else "",
        )
        try:
            while not self.stop.is_set():
                try:
                    self._consume_once(backoff)
                except RECONNECT_ERRORS as exc:
                    self.stop.wait(self._retry_delay(exc, backoff))
        finally:
            self._lanes.drop_queued()
            self._lanes.shutdown()
            self.confirmer.close()
        if self._fatal is not None:
            raise self._fatal
        log.info("consumer stopped: %s", self.stats)
        return self.stats

    def _retry_delay(self, exc: BaseException, backoff: Backoff) -> float:
        if _exclusively_consumed(exc):
            if not self._standing_by:
                log.info("another worker consumes %s; standing by until it stops", self.queue)
            self._standing_by = True
            return STANDBY_RETRY_SECONDS
        delay = backoff.next_delay()
        log.warning("broker connection lost (%r); reconnecting in %.1fs", exc, delay)
        return delay

    def _consume_once(self, backoff: Backoff) -> None:
        connection = open_blocking(self.config.rabbitmq_url)
        epoch = self._unsettled.new_channel()
        self._in_hand.reset(epoch)
        if self.recovering:
            self.recovery.reschedule()
        try:
            channel = connection.channel()
            self._first_copies.started(channel, self.queue)
            channel.basic_qos(prefetch_count=self.prefetch)
            messages = channel.consume(
                self.queue, exclusive=self.exclusive, inactivity_timeout=INACTIVITY_SECONDS
            )
            for method, properties, body in messages:
                backoff.reset()
                self._standing_by = False
                if method is not None:
                    self.handle_delivery(connection, channel, method, properties, body, epoch)
                self._sweep_if_due(connection)
                if self.stop.is_set():
                    break
            self._unsettled.done(epoch, self._lanes.drop_queued())
            self._finish_in_flight(connection)
            channel.cancel()  # requeues what was prefetched but not handled
        finally:
            self._unsettled.done(epoch, self._lanes.drop_queued())
            if connection.is_open:
                connection.close()

    def handle_delivery(
        self,
        connection: Any,
        channel: Any,
        method: Any,
        properties: Any,
        body: bytes,
        epoch: int,
    ) -> None:
        """Parse one message and queue it in its aggregate's lane."""
        message = self._parse(channel, method, properties, body)
        if message is None:
            return
        if self._owe_past_cap(message, epoch):
            channel.basic_ack(method.delivery_tag)
            self.stats.owed += 1
            return
        copy = may_be_duplicate(bool(method.redelivered), properties.headers)
        counted = self.recovering and message.sequence is not None
        # a shared queue's other worker may hold a copy: only an exclusive worker skips
        opens = self.exclusive and self._first_copies.opens_aggregate(message, copy)
        delivery = Delivery(
            message, method.delivery_tag, connection, channel, epoch, copy, counted, opens
        )
        if not delivery.opens_aggregate:
            self.sequences.expect(message)
        self._unsettled.add(epoch)
        work = partial(self._process, delivery)
        traced = traced_delivery(work, properties.headers, message.event_id, self.queue)
        self._lanes.submit(message.aggregate_key, traced)

    def _owe_past_cap(self, message: EventMessage, epoch: int) -> bool:
        """True when ``message`` is left to the API: its customer is at the in-hand cap, or
        already owed (the message is then acked unhandled; the outbox still lists it)."""
        if not self.recovering or message.sequence is None:
            return False
        key = message.aggregate_key
        if not self.recovery.owed.owes(key) and self._in_hand.take(key, epoch):
            return False
        self.recovery.owe(key, message.customer_id, message.sequence)
        return True

    def _sweep_if_due(self, connection: Any) -> None:
        """At start and every recovery interval: lost dead letters, then the lost tail."""
        if not self.recovering or time.monotonic() < self._next_sweep:
            return
        self._next_sweep = time.monotonic() + self.config.recovery_interval_seconds
        try:
            taken, more = sweep_lost_letters(connection, self.dlq, self._owe_lost)
        except pika.exceptions.ChannelClosedByBroker as exc:
            log.warning("cannot sweep %s for lost letters: %s", self.dlq, exc)
        else:
            self.stats.lost_letters += taken
            if more:  # a long DLQ of lost letters: go on at once
                self._next_sweep = 0.0
        self.recovery.sweep_tail()

    def _owe_lost(self, message: EventMessage) -> bool:
        """A letter the queue expired or overflowed: its aggregate is owed through it."""
        if message.sequence is None:
            return False
        self.recovery.owe(message.aggregate_key, message.customer_id, message.sequence)
        return True

    def _parse(
        self, channel: Any, method: Any, properties: Any, body: bytes
    ) -> EventMessage | None:
        """The event, or None after rejecting a poison message to the DLQ."""
        try:
            return decode_message(body)
        except InvalidMessage as exc:
            log.error("poison message %s: %s; moved to the DLQ", properties.message_id, exc)
            channel.basic_reject(method.delivery_tag, requeue=False)
            self.stats.poison += 1
            return None

    def _process(self, delivery: Delivery) -> None:
        """In the aggregate's lane: skip or handle, record the receipt, then hand back the ack."""
        try:
            self._process_in_hand(delivery)
        finally:
            if delivery.in_hand:
                self._in_hand.release(delivery.message.aggregate_key, delivery.epoch)

    def _process_in_hand(self, delivery: Delivery) -> None:
        if self.stop.is_set() or delivery.epoch != self._unsettled.epoch:
            self._unsettled.done(delivery.epoch)  # not started: unacked, redelivered in order
            return
        try:
            outcome = self._handle_or_skip(delivery.message, delivery.opens_aggregate)
        except WorkerUnauthorized as exc:
            outcome = None
            self._fail(exc)
        except Exception as exc:  # a receipt that cannot be sent: dead-letter, never loop
            log.error(
                "receipt of %s failed: %s; moved to the DLQ",
                delivery.message.event_id,
                describe_failure(exc),
            )
            outcome = Outcome("failed", Receipt.REFUSED)
        except BaseException:
            self._unsettled.done(delivery.epoch)
            raise
        if outcome is None:
            self._unsettled.done(delivery.epoch)  # stopping first: unacked, redelivered
            return
        if outcome.receipt is Receipt.RECORDED and outcome.status != "failed":
            self.sequences.confirmed(delivery.message)
        settle = partial(self._settle, delivery, outcome)
        if not _call_soon(delivery.connection, settle):
            self._unsettled.done(delivery.epoch)

    def _handle_or_skip(self, message: EventMessage, opens: bool = False) -> Outcome | None:
        """Skip a stale duplicate or call the handler, then confirm; None when stopping.

        An aggregate not seen yet costs a look-up of its last delivered sequence (batched),
        unless ``message`` opens it (``Delivery.opens_aggregate``: the cache alone answers);
        events between it and ``message`` are fetched from the API and handled first.
        """
        last = self.sequences.last_delivered(message, ask=not opens)
        if last is None:
            return None
        if self.recovering and message.sequence is not None and message.sequence > last + 1:
            if not self.recovery.fill_gap(message, last):
                return None
            last = self.sequences.last_delivered(message, ask=False) or last
        if message.sequence is not None and message.sequence <= last:
            skipped = stale_detail(message.sequence, last)
            log.info("event %s: %s", message.event_id, skipped)
            return Outcome("received", self._confirm(message, "received", skipped), stale=True)
        status, detail = self._run_handler(message)
        return Outcome(status, self._confirm(message, status, detail))

    def _handle_recovered(self, message: EventMessage) -> bool:
        """In its lane: an event fetched from the API, handled unless already delivered.

        Nothing to ack: a failure is a ``failed`` receipt (``events redeliver`` retries it).
        False when stopping.
        """
        last = self.sequences.last_delivered(message)
        if last is None or self.stop.is_set():
            return False
        if message.sequence is not None and message.sequence <= last:
            return True
        status, detail = self._run_handler(message)
        try:
            receipt = self._confirm(message, status, detail)
        except WorkerUnauthorized:
            raise
        except Exception as exc:  # as for a queue message: recorded nowhere, go on
            log.error("receipt of %s failed: %s", message.event_id, describe_failure(exc))
            receipt = Receipt.REFUSED
        if receipt is Receipt.ABANDONED:
            return False
        delivered = receipt is Receipt.RECORDED and status != "failed"
        if delivered:
            self.sequences.confirmed(message)
        with self._stats_lock:  # lanes count side by side
            if delivered:
                self.stats.recovered += 1
            else:
                self.stats.failed += 1
        return True

    def _confirm(self, message: EventMessage, status: str, detail: str | None) -> Receipt:
        """Record the receipt through the API (the one place that confirms)."""
        return self.confirmer.confirm(message.event_id, status, detail)

    def _run_handler(self, message: EventMessage) -> tuple[str, str | None]:
        """Call the handler (the one place that does): the receipt status and detail."""
        with handler_span(message.event_type, message.event_id):
            return call_handler(self.handler, message)

    def _settle(self, delivery: Delivery, outcome: Outcome) -> None:
        """On the connection's thread: ack or reject once the receipt is known."""
        self._unsettled.done(delivery.epoch)
        if outcome.receipt is Receipt.ABANDONED:
            log.warning("stopping before delivery %d was confirmed; it stays unacked", delivery.tag)
            return
        acked = outcome.receipt is Receipt.RECORDED and outcome.status != "failed"
        if acked:  # a lost channel raises here: reconnect, the broker redelivers it
            delivery.channel.basic_ack(delivery.tag)
        else:
            delivery.channel.basic_reject(delivery.tag, requeue=False)
        self._count(outcome, acked)

    def _count(self, outcome: Outcome, acked: bool) -> None:
        with self._stats_lock:
            if acked and outcome.stale:
                self.stats.stale += 1
            elif acked:
                self.stats.processed += 1
            elif outcome.receipt is Receipt.REFUSED:
                self.stats.refused += 1
            else:
                self.stats.failed += 1

    def _fail(self, exc: BaseException) -> None:
        """A lane item raised (bad credentials, a bug): stop; its message stays unacked."""
        if self._fatal is None:
            self._fatal = exc
        self.stop.set()

    def _finish_in_flight(self, connection: Any) -> None:
        """Let started deliveries settle (their API calls give up quickly once stopping), for
        at most ``SHUTDOWN_GRACE_SECONDS``; what is still unsettled then is redelivered."""
        deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS
        while self._unsettled.count and connection.is_open and time.monotonic() < deadline:
            connection.process_data_events(time_limit=SETTLE_POLL_SECONDS)


def _exclusively_consumed(exc: BaseException) -> bool:
    """Whether the broker refused the consume because another consumer holds it exclusively."""
    return (
        isinstance(exc, pika.exceptions.ChannelClosedByBroker)
        and exc.reply_code == ACCESS_REFUSED
        and "exclusive" in str(exc.reply_text)
    )


def _call_soon(connection: Any, callback: Callable[[], None]) -> bool:
    """Run ``callback`` on the connection's thread; False when the connection is gone."""
    try:
        connection.add_callback_threadsafe(callback)
    except Exception as exc:  # connection gone: the broker redelivers the message
        log.debug("cannot settle on a closed connection: %r", exc)
        return False
    return True
