"""Erasure in the broker: an erased customer's dead letters are redacted in its tenant's DLQ.

Every ready dead letter is taken (unacked, so a failure loses none). Those of the customer
go back to the DLQ as copies whose payload is the erasure marker, the same one the event
rows get; their originals are acked only once the copy is confirmed. Every other letter is
returned untouched. A copy keeps the original's properties (``x-death`` included, so a
replay still finds its routing key) and is marked ``x-fintegrate-erased``.

Not reached (docs/RELIABILITY.md, "What erasure reaches"): letters unacked by a replay
running at that moment, bodies that are not Fintegrate events (no customer to match), and
copies already in the tenant queue or the tenant's own systems.
"""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import pika
import pika.exceptions

from service.config import Settings
from service.messaging import topology
from service.messaging.connection import BrokerUnavailable, open_blocking
from service.messaging.messages import resent_properties
from service.messaging.publish.publisher import ConfirmingPublisher, OutgoingMessage

ERASED_PAYLOAD: dict[str, Any] = {"erased": True}  # fintegrate_erased_payload() in SQL
ERASED_HEADER = "x-fintegrate-erased"
NOT_FOUND = 404
# Dead letters held unacked at once: far above a healthy DLQ, and it bounds the memory a
# runaway DLQ can take from the API process.
MAX_LETTERS = 100_000

Letter = tuple[Any, Any, bytes]  # (method, properties, body) as basic_get answers


def redact_dead_letters(settings: Settings, consumer_name: str, customer_id: UUID) -> int:
    """Replace the customer's dead letters in the tenant's DLQ by redacted copies.

    Returns how many were redacted. Raises BrokerUnavailable when the broker cannot be
    reached or a copy was not confirmed (nothing is lost: the originals stay).
    """
    connection = open_blocking(settings.rabbitmq_url)
    try:
        channel = connection.channel()
        letters = _take_all(channel, topology.dlq_name(consumer_name))
        if letters is None:
            return 0
        mine = [letter for letter in letters if _needs_redaction(letter[2], str(customer_id))]
        unconfirmed = _replace(settings, channel, consumer_name, mine)
        channel.basic_nack(delivery_tag=0, multiple=True, requeue=True)  # the rest go back
    except pika.exceptions.AMQPError as exc:
        raise BrokerUnavailable(f"dead letters could not be redacted: {exc!r}") from exc
    finally:
        if connection.is_open:
            connection.close()
    if unconfirmed:
        raise BrokerUnavailable(f"{unconfirmed} redacted dead letters were not confirmed")
    return len(mine)


def redacted_body(body: bytes) -> bytes:
    """The event body with its payload replaced by the erasure marker."""
    document = json.loads(body)
    document["payload"] = ERASED_PAYLOAD
    return json.dumps(document, separators=(",", ":")).encode()


def _take_all(channel: Any, dlq: str) -> list[Letter] | None:
    """Every ready dead letter, unacked; None when the tenant has no DLQ."""
    letters: list[Letter] = []
    try:
        for _ in range(MAX_LETTERS):
            method, properties, body = channel.basic_get(dlq, auto_ack=False)
            if method is None:
                break
            letters.append((method, properties, body))
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == NOT_FOUND:
            return None
        raise
    return letters


def _needs_redaction(body: bytes, customer_id: str) -> bool:
    try:
        document = json.loads(body)
    except ValueError:
        return False  # not an event: no customer to match
    return (
        isinstance(document, dict)
        and document.get("customer_id") == customer_id
        and document.get("payload") != ERASED_PAYLOAD
    )


def _replace(settings: Settings, channel: Any, consumer_name: str, letters: list[Letter]) -> int:
    """Publish the redacted copies to the DLQ, ack each original once its copy is confirmed;
    returns how many copies were not confirmed (their originals stay)."""
    if not letters:
        return 0
    routing_key = topology.dlq_routing_key(consumer_name)
    copies = [
        OutgoingMessage(routing_key, redacted_body(body), _marked(properties))
        for _, properties, body in letters
    ]
    with ConfirmingPublisher(settings.rabbitmq_url) as publisher:
        results = publisher.publish_batch(copies)
    for (method, _, _), result in zip(letters, results, strict=True):
        if result.ok:
            channel.basic_ack(method.delivery_tag)
    return sum(not result.ok for result in results)


def _marked(properties: Any) -> pika.BasicProperties:
    headers = dict(properties.headers or {})
    headers[ERASED_HEADER] = True
    return resent_properties(properties, headers)
