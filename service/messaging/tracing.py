"""Messaging spans and the AMQP ``traceparent`` header: the relay's send, the worker's process.

Span names and attributes follow the OpenTelemetry messaging semantic conventions of
semconv 1.44.0 (docs/observability.md): ``send customer_events`` (PRODUCER) per published
event, ``process customer_notification_{name}`` (CONSUMER) per delivery, with
``messaging.system=rabbitmq``, the destination, the routing key and
``messaging.message.id`` = the event id. With tracing off no span is made, and the relay
forwards the event's stored ``traceparent`` as it is (a traced API, an untraced relay).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from service.kit import tracing
from service.messaging import topology

SYSTEM = "rabbitmq"


def message_attributes(event_id: str, destination: str, operation: str) -> dict[str, Any]:
    """The messaging attributes every span of one message carries."""
    return {
        "messaging.system": SYSTEM,
        "messaging.destination.name": destination,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "messaging.message.id": event_id,
    }


class PublishSpans:
    """The PRODUCER spans of one publish wave: started as each message is built (their
    context goes in its ``traceparent`` header), ended with the broker's answer."""

    def __init__(self) -> None:
        self._open: dict[str, Any] = {}

    def headers(self, row: Any, extra: dict[str, Any] | None) -> dict[str, Any] | None:
        """``extra`` plus the ``traceparent`` the message carries (if any)."""
        stored = getattr(row, "traceparent", None)
        if not tracing.ENABLED:
            return {**(extra or {}), tracing.TRACEPARENT: stored} if stored else extra
        event_id = str(row.event_id)
        attributes = message_attributes(event_id, topology.EXCHANGE, "send")
        attributes["messaging.rabbitmq.destination.routing_key"] = topology.routing_key(
            row.event_type, row.consumer_name
        )
        span = tracing.start_span(f"send {topology.EXCHANGE}", "producer", attributes, stored)
        self._open[event_id] = span
        return {**(extra or {}), tracing.TRACEPARENT: tracing.traceparent_of(span)}

    def finish(self, event_id: str, error: str | None) -> None:
        """The broker answered for ``event_id``: confirmed (``error`` None) or not."""
        tracing.end_span(self._open.pop(event_id, None), error)

    def abandon(self, reason: str) -> None:
        """End what is still open (the wave was not sent) as errors."""
        for event_id in list(self._open):
            self.finish(event_id, reason)


def traced_delivery(
    work: Callable[[], None], headers: dict[str, Any] | None, event_id: str, queue: str
) -> Callable[[], None]:
    """``work`` (a delivery's processing) inside a CONSUMER span continuing the message's
    ``traceparent``; ``work`` itself when tracing is off."""
    if not tracing.ENABLED:
        return work
    parent = (headers or {}).get(tracing.TRACEPARENT)
    parent = parent.decode() if isinstance(parent, bytes) else parent

    def run() -> None:
        attributes = message_attributes(event_id, queue, "process")
        with tracing.span(f"process {queue}", "consumer", attributes, parent):
            work()

    return run


def handler_span(event_type: str, event_id: str) -> Any:
    """The span around the tenant's handler call (a no-op context when tracing is off)."""
    return tracing.span(f"handle {event_type}", "internal", {"messaging.message.id": event_id})
