"""The event message: JSON body and AMQP properties (SPEC 5), built and parsed in one place."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pika

from service.messaging import topology

CONTENT_TYPE = "application/json"
PERSISTENT = 2
APP_ID = "fintegrate"
SEQUENCE_HEADER = "x-fintegrate-sequence"
# A message that may already have reached the queue carries one of these (SPEC 5 copies):
POSSIBLE_DUPLICATE_HEADER = "x-fintegrate-possible-duplicate"  # the relay: outcome unrecorded
REPUBLISHED_HEADER = "x-fintegrate-republished"  # resend / redeliver ("resend" | "redeliver")
REPLAYED_HEADER = "x-fintegrate-replayed"  # DLQ replay
COPY_HEADERS = (POSSIBLE_DUPLICATE_HEADER, REPUBLISHED_HEADER, REPLAYED_HEADER)


class InvalidMessage(ValueError):
    """A message body that is not a Fintegrate event (poison: goes to the DLQ)."""


@dataclass(frozen=True)
class OutboundEvent:
    """One event row ready to publish."""

    event_id: str
    event_type: str
    consumer_id: str
    consumer_name: str
    customer_id: str | None
    occurred_at: datetime
    sequence: int
    payload: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def routing_key(self) -> str:
        return topology.routing_key(self.event_type, self.consumer_name)

    @property
    def aggregate_id(self) -> str:
        """The aggregate this event orders within: its customer, else its consumer."""
        return self.customer_id or self.consumer_id


@dataclass(frozen=True)
class EventMessage:
    """A parsed message as the consumer worker sees it."""

    event_id: str
    event_type: str
    consumer_name: str
    customer_id: str | None
    occurred_at: str
    payload: dict[str, Any]
    metadata: dict[str, Any]
    raw: dict[str, Any]
    consumer_id: str | None = None
    sequence: int | None = None

    @property
    def aggregate_key(self) -> str:
        """Events with one key are handled in sequence order: the customer, else the consumer."""
        return self.customer_id or self.consumer_id or self.consumer_name


def event_from_row(row: Any) -> OutboundEvent:
    """An OutboundEvent from a row with the customer_events columns plus consumer_name."""
    return OutboundEvent(
        event_id=str(row.event_id),
        event_type=row.event_type,
        consumer_id=str(row.consumer_id),
        consumer_name=row.consumer_name,
        customer_id=str(row.customer_id) if row.customer_id is not None else None,
        occurred_at=row.created_at,
        sequence=int(row.sequence),
        payload=row.payload_json or {},
        metadata=row.metadata_json or {},
    )


def message_body(event: OutboundEvent) -> bytes:
    """The JSON body of SPEC 5."""
    document = {
        "event_id": event.event_id,
        "event_type": event.event_type,
        "occurred_at": event.occurred_at.isoformat(),
        "consumer": {"consumer_id": event.consumer_id, "name": event.consumer_name},
        "customer_id": event.customer_id,
        "sequence": event.sequence,
        "payload": event.payload,
        "metadata": event.metadata,
        "schema_version": topology.SCHEMA_VERSION,
    }
    return json.dumps(document, separators=(",", ":"), default=str).encode()


def message_properties(
    event: OutboundEvent, headers: dict[str, Any] | None = None
) -> pika.BasicProperties:
    """message_id = event_id, type = event_type, JSON, persistent, timestamp in seconds.

    The aggregate sequence travels as header ``x-fintegrate-sequence`` (and in the body).
    """
    return pika.BasicProperties(
        message_id=event.event_id,
        type=event.event_type,
        content_type=CONTENT_TYPE,
        delivery_mode=PERSISTENT,
        timestamp=int(event.occurred_at.timestamp()),
        app_id=APP_ID,
        headers={SEQUENCE_HEADER: event.sequence, **(headers or {})},
    )


def resent_properties(properties: Any, headers: dict[str, Any]) -> pika.BasicProperties:
    """A received message's properties for a copy sent again: the same, persistent, with
    ``headers`` in place of its own (DLQ replay and redaction)."""
    return pika.BasicProperties(
        content_type=properties.content_type,
        delivery_mode=properties.delivery_mode or PERSISTENT,
        message_id=properties.message_id,
        type=properties.type,
        timestamp=properties.timestamp,
        app_id=properties.app_id,
        headers=headers,
    )


def may_be_duplicate(redelivered: bool, headers: dict[str, Any] | None) -> bool:
    """True when a delivery may be a second copy: the broker redelivers it, or a header says
    it was republished, replayed, or published again after an unrecorded outcome.

    Every other delivery is the first copy of its event, so the worker need not ask the API
    for its aggregate's last delivered sequence.
    """
    return redelivered or any((headers or {}).get(name) for name in COPY_HEADERS)


def parse_message(body: bytes) -> EventMessage:
    """Parse and validate a message body; raise InvalidMessage when it is not an event."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidMessage(f"body is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise InvalidMessage("body is not a JSON object")
    event_id = _valid_uuid(document.get("event_id"))
    event_type = document.get("event_type")
    if event_type not in topology.EVENT_TYPES:
        raise InvalidMessage(f"unknown event_type {event_type!r}")
    consumer = document.get("consumer")
    if not isinstance(consumer, dict) or not isinstance(consumer.get("name"), str):
        raise InvalidMessage("consumer.name is missing")
    return EventMessage(
        event_id=event_id,
        event_type=event_type,
        consumer_name=consumer["name"],
        consumer_id=_optional_str(consumer.get("consumer_id")),
        customer_id=_optional_str(document.get("customer_id")),
        sequence=_sequence(document.get("sequence")),
        occurred_at=str(document.get("occurred_at", "")),
        payload=_object(document.get("payload")),
        metadata=_object(document.get("metadata")),
        raw=document,
    )


def message_from_event(event: dict[str, Any], consumer_name: str) -> EventMessage:
    """The message the worker would have received for ``event`` (an event as the API lists
    it): how events recovered from the API reach the handler in the same shape."""
    document = {
        "event_id": event.get("event_id"),
        "event_type": event.get("event_type"),
        "occurred_at": event.get("created_at"),
        "consumer": {"consumer_id": event.get("consumer_id"), "name": consumer_name},
        "customer_id": event.get("customer_id"),
        "sequence": event.get("sequence"),
        "payload": event.get("payload") or {},
        "metadata": event.get("metadata") or {},
        "schema_version": topology.SCHEMA_VERSION,
    }
    return parse_message(json.dumps(document).encode())


def _valid_uuid(value: Any) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError as exc:
        raise InvalidMessage(f"event_id {value!r} is not a UUID") from exc


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _sequence(value: Any) -> int | None:
    """The aggregate sequence: a positive integer (never a bool), or None when absent."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidMessage(f"sequence {value!r} is not a positive integer")
    return value


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
