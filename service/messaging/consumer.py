"""The event consumer worker: one tenant queue in, handler, receipt through the API, ack.

For each message: parse (unparseable → DLQ, no API call), call the handler, record the
receipt (``processed``, or ``failed`` when the handler raised), then ack — or reject to
the DLQ after a ``failed`` receipt. Nothing is acked before its receipt is recorded: while
the API is unavailable the worker retries with bounded backoff; when asked to stop then,
it leaves the message unacked and RabbitMQ redelivers it. A lost broker connection is
reopened with bounded backoff (unacked messages go back to the queue by themselves).
Delivery is at least once; receipts are idempotent per event_id, so duplicates are harmless.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pika

from service.config import Settings
from service.messaging import topology
from service.messaging.connection import BROKER_ERRORS, Backoff, BrokerUnavailable, open_blocking
from service.messaging.messages import EventMessage, InvalidMessage, parse_message
from service.messaging.receipts import DeliveryConfirmer, Receipt

log = logging.getLogger(__name__)

Handler = Callable[[EventMessage], Any]
INACTIVITY_SECONDS = 0.5
SLEEP_SLICE_SECONDS = 0.2
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
    """Consumes ``customer_notification_{name}`` until ``stop`` is set."""

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
        self._connection: pika.BlockingConnection | None = None
        self.confirmer = confirmer or DeliveryConfirmer(
            settings.api_url, settings.api_key or "", stop, sleep=self._sleep
        )

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
            self.confirmer.close()
        log.info("consumer stopped: %s", self.stats)
        return self.stats

    def _consume_once(self, backoff: Backoff) -> None:
        connection = open_blocking(self.settings.rabbitmq_url)
        self._connection = connection
        try:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=self.prefetch)
            backoff.reset()
            for method, properties, body in channel.consume(
                self.queue, inactivity_timeout=INACTIVITY_SECONDS
            ):
                if method is not None:
                    self.handle_delivery(channel, method, properties, body)
                if self.stop.is_set():
                    break
            channel.cancel()  # requeues what was prefetched but not handled
        finally:
            self._connection = None
            if connection.is_open:
                connection.close()

    def handle_delivery(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        """Parse, handle, confirm, then ack or reject one message."""
        try:
            message = parse_message(body)
        except InvalidMessage as exc:
            log.error("poison message %s: %s; moved to the DLQ", properties.message_id, exc)
            channel.basic_reject(method.delivery_tag, requeue=False)
            self.stats.poison += 1
            return
        status, detail = self._run_handler(message)
        receipt = self.confirmer.confirm(message.event_id, status, detail)
        if receipt is Receipt.ABANDONED:
            log.warning("stopping before %s was confirmed; it stays unacked", message.event_id)
            return
        if receipt is Receipt.RECORDED and status == "processed":
            channel.basic_ack(method.delivery_tag)
            self.stats.processed += 1
            return
        channel.basic_reject(method.delivery_tag, requeue=False)
        if receipt is Receipt.REFUSED:
            self.stats.refused += 1
        else:
            self.stats.failed += 1

    def _run_handler(self, message: EventMessage) -> tuple[str, str | None]:
        try:
            self.handler(message)
        except Exception as exc:
            log.exception("handler failed for %s", message.event_id)
            return "failed", f"{type(exc).__name__}: {exc}"[:2000]
        return "processed", None

    def _sleep(self, seconds: float) -> None:
        """Wait while keeping the broker connection alive (heartbeats), until ``stop``."""
        deadline = time.monotonic() + seconds
        while not self.stop.is_set() and time.monotonic() < deadline:
            slice_seconds = min(SLEEP_SLICE_SECONDS, deadline - time.monotonic())
            if self._connection is not None and self._connection.is_open:
                self._connection.sleep(max(slice_seconds, 0))
            else:
                self.stop.wait(slice_seconds)
