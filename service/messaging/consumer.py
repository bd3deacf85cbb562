"""The event consumer worker: one tenant queue in, handler, receipt through the API, ack.

For each message: parse (unparseable → DLQ, no API call), call the handler, record the
receipt (``processed``, or ``failed`` when the handler raised), then ack — or reject to
the DLQ after a ``failed`` receipt. Nothing is acked before its receipt is recorded: while
the API is unavailable the worker retries with bounded backoff; when asked to stop then,
it leaves the message unacked and RabbitMQ redelivers it. A lost broker connection is
reopened with bounded backoff (unacked messages go back to the queue by themselves).
Delivery is at least once; receipts are idempotent per event_id, so duplicates are harmless.
Handlers run in delivery order; receipts are posted concurrently (up to ``prefetch``).
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from service.config import Settings
from service.messaging import topology
from service.messaging.connection import BROKER_ERRORS, Backoff, BrokerUnavailable, open_blocking
from service.messaging.messages import EventMessage, InvalidMessage
from service.messaging.poison import call_handler, decode_message, describe_failure
from service.messaging.receipts import DeliveryConfirmer, Receipt, WorkerUnauthorized

log = logging.getLogger(__name__)

Handler = Callable[[EventMessage], Any]
INACTIVITY_SECONDS = 0.5
SETTLE_POLL_SECONDS = 0.1
SHUTDOWN_GRACE_SECONDS = 10.0
MAX_CONFIRM_THREADS = 16
MAX_RECONNECT_DELAY_SECONDS = 10.0
RECONNECT_ERRORS: tuple[type[BaseException], ...] = (BrokerUnavailable, *BROKER_ERRORS)


def log_event(message: EventMessage) -> None:
    """The default handler: log the event."""
    log.info(
        "event %s %s customer=%s payload=%s",
        message.event_type,
        message.event_id,
        message.customer_id,
        message.payload,
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


@dataclass
class ConsumerStats:
    """What the worker did."""

    processed: int = 0
    failed: int = 0
    poison: int = 0
    refused: int = 0


class EventConsumer:
    """Consumes ``customer_notification_{name}`` until ``stop`` is set.

    Handlers run one at a time, in delivery order, on the connection's thread. Receipts are
    posted by a small thread pool, so up to ``prefetch`` confirmations are in flight; each
    ack or reject is handed back to the connection's thread once its receipt is recorded.
    """

    def __init__(
        self,
        settings: Settings,
        consumer_name: str,
        stop: threading.Event,
        handler: Handler = log_event,
        prefetch: int | None = None,
        confirmer: DeliveryConfirmer | None = None,
    ):
        if confirmer is None and not settings.api_key:
            raise ValueError(
                "FINTEGRATE_API_KEY (this tenant's key) is required to confirm delivery"
            )
        self.settings = settings
        self.queue = topology.queue_name(consumer_name)
        self.stop = stop
        self.handler = handler
        self.prefetch = prefetch or settings.consumer_prefetch
        self.stats = ConsumerStats()
        self.confirmer = confirmer or DeliveryConfirmer(
            settings.api_url, settings.api_key or "", stop
        )
        self._pool = ThreadPoolExecutor(
            max_workers=min(self.prefetch, MAX_CONFIRM_THREADS), thread_name_prefix="confirm"
        )
        self._in_flight: set[int] = set()
        self._fatal: BaseException | None = None

    def run(self) -> ConsumerStats:
        """Consume, reconnecting with bounded backoff, until stopped."""
        backoff = Backoff(initial=0.2, maximum=MAX_RECONNECT_DELAY_SECONDS)
        log.info("consuming %s (prefetch %d)", self.queue, self.prefetch)
        try:
            while not self.stop.is_set():
                try:
                    self._consume_once(backoff)
                except RECONNECT_ERRORS as exc:
                    delay = backoff.next_delay()
                    log.warning("broker connection lost (%r); reconnecting in %.1fs", exc, delay)
                    self.stop.wait(delay)
        finally:
            self._pool.shutdown(wait=True)
            self.confirmer.close()
        if self._fatal is not None:
            raise self._fatal
        log.info("consumer stopped: %s", self.stats)
        return self.stats

    def _consume_once(self, backoff: Backoff) -> None:
        connection = open_blocking(self.settings.rabbitmq_url)
        self._in_flight.clear()
        try:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=self.prefetch)
            backoff.reset()
            for method, properties, body in channel.consume(
                self.queue, inactivity_timeout=INACTIVITY_SECONDS
            ):
                if method is not None:
                    self.handle_delivery(connection, channel, method, properties, body)
                if self.stop.is_set():
                    break
            self._finish_in_flight(connection)
            channel.cancel()  # requeues what was prefetched but not handled
        finally:
            if connection.is_open:
                connection.close()

    def handle_delivery(
        self, connection: Any, channel: Any, method: Any, properties: Any, body: bytes
    ) -> None:
        """Parse and handle one message, then confirm it in the background."""
        try:
            message = decode_message(body)
        except InvalidMessage as exc:
            log.error("poison message %s: %s; moved to the DLQ", properties.message_id, exc)
            channel.basic_reject(method.delivery_tag, requeue=False)
            self.stats.poison += 1
            return
        status, detail = self._run_handler(message)
        tag = method.delivery_tag
        self._in_flight.add(tag)
        future = self._pool.submit(self.confirmer.confirm, message.event_id, status, detail)
        future.add_done_callback(
            lambda done: _call_soon(connection, partial(self._settle, channel, tag, status, done))
        )

    def _settle(self, channel: Any, tag: int, status: str, done: Future[Receipt]) -> None:
        """On the connection's thread: ack or reject once the receipt is known."""
        self._in_flight.discard(tag)
        try:
            receipt = done.result()
        except WorkerUnauthorized as exc:
            self._fatal = exc
            self.stop.set()
            return
        except Exception as exc:  # a receipt that cannot be sent: dead-letter, do not loop
            log.error(
                "receipt of delivery %d failed: %s; moved to the DLQ", tag, describe_failure(exc)
            )
            channel.basic_reject(tag, requeue=False)
            self.stats.failed += 1
            return
        if receipt is Receipt.ABANDONED:
            log.warning("stopping before delivery %d was confirmed; it stays unacked", tag)
            return
        if receipt is Receipt.RECORDED and status == "processed":
            channel.basic_ack(tag)
            self.stats.processed += 1
            return
        channel.basic_reject(tag, requeue=False)
        if receipt is Receipt.REFUSED:
            self.stats.refused += 1
        else:
            self.stats.failed += 1

    def _finish_in_flight(self, connection: Any) -> None:
        """Let pending receipts settle (they give up quickly once ``stop`` is set), for at
        most ``SHUTDOWN_GRACE_SECONDS``; what is still unsettled then is redelivered."""
        deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS
        while self._in_flight and connection.is_open and time.monotonic() < deadline:
            connection.process_data_events(time_limit=SETTLE_POLL_SECONDS)

    def _run_handler(self, message: EventMessage) -> tuple[str, str | None]:
        return call_handler(self.handler, message)


def _call_soon(connection: Any, callback: Callable[[], None]) -> None:
    """Run ``callback`` on the connection's thread; a closed connection means redelivery."""
    try:
        connection.add_callback_threadsafe(callback)
    except Exception as exc:  # connection gone: the broker redelivers the message
        log.debug("cannot settle on a closed connection: %r", exc)
