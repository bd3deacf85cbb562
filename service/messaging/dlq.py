"""Dead-letter replay: move a tenant's DLQ messages back to its queue, safely.

Each message is republished through the exchange with its ORIGINAL routing key (the first
``x-death`` entry; else derived from the message type), marked ``x-fintegrate-replayed``
and counted in ``x-fintegrate-replay-count``. A dead letter is acked from the DLQ only
after its republish was confirmed and routed; otherwise it is put back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pika

from service.messaging import topology
from service.messaging.publisher import ConfirmingPublisher, OutgoingMessage

log = logging.getLogger(__name__)

REPLAYED_HEADER = "x-fintegrate-replayed"
REPLAY_COUNT_HEADER = "x-fintegrate-replay-count"
REPLAY_BATCH = 100


@dataclass
class ReplayOutcome:
    """Counts of one replay run."""

    requested: int
    replayed: int = 0
    failed: int = 0
    reasons: list[str] | None = None


def original_routing_key(consumer_name: str, method: Any, properties: Any) -> str | None:
    """The routing key the message had before it was dead-lettered, if it can be known."""
    deaths = (properties.headers or {}).get("x-death") or []
    for death in deaths:
        keys = death.get("routing-keys") or []
        if keys and keys[0] != topology.dlq_routing_key(consumer_name):
            return str(keys[0])
    if properties.type in topology.EVENT_TYPES:
        return topology.routing_key(properties.type, consumer_name)
    return None


def replay_message(routing_key: str, properties: Any, body: bytes) -> OutgoingMessage:
    """The dead letter as it goes back: same body and properties, replay headers added."""
    headers = dict(properties.headers or {})
    headers[REPLAYED_HEADER] = True
    headers[REPLAY_COUNT_HEADER] = int(headers.get(REPLAY_COUNT_HEADER, 0)) + 1
    replayed = pika.BasicProperties(
        content_type=properties.content_type,
        delivery_mode=properties.delivery_mode or 2,
        message_id=properties.message_id,
        type=properties.type,
        timestamp=properties.timestamp,
        app_id=properties.app_id,
        headers=headers,
    )
    return OutgoingMessage(routing_key, body, replayed)


def replay_dead_letters(
    channel: Any,
    publisher: ConfirmingPublisher,
    consumer_name: str,
    limit: int,
    on_progress: Callable[[int], None] = lambda _count: None,
) -> ReplayOutcome:
    """Move up to ``limit`` dead letters back; stops at the first batch with a failure."""
    outcome = ReplayOutcome(requested=limit, reasons=[])
    dlq = topology.dlq_name(consumer_name)
    while outcome.replayed + outcome.failed < limit:
        fetched = _fetch(channel, dlq, min(REPLAY_BATCH, limit - outcome.replayed - outcome.failed))
        if not fetched:
            break
        _replay_batch(channel, publisher, consumer_name, fetched, outcome)
        on_progress(len(fetched))
        if outcome.failed:
            break
    return outcome


def _fetch(channel: Any, dlq: str, count: int) -> list[tuple[Any, Any, bytes]]:
    fetched = []
    for _ in range(count):
        method, properties, body = channel.basic_get(dlq, auto_ack=False)
        if method is None:
            break
        fetched.append((method, properties, body))
    return fetched


def _replay_batch(
    channel: Any,
    publisher: ConfirmingPublisher,
    consumer_name: str,
    fetched: list[tuple[Any, Any, bytes]],
    outcome: ReplayOutcome,
) -> None:
    keys = [original_routing_key(consumer_name, m, p) for m, p, _ in fetched]
    sendable = [(item, key) for item, key in zip(fetched, keys, strict=True) if key is not None]
    results = publisher.publish_batch(
        [replay_message(key, properties, body) for (_, properties, body), key in sendable]
    )
    for ((method, _, _), _), result in zip(sendable, results, strict=True):
        if result.ok:
            channel.basic_ack(method.delivery_tag)
            outcome.replayed += 1
        else:
            channel.basic_nack(method.delivery_tag, requeue=True)
            outcome.failed += 1
            _note(outcome, result.reason or "not confirmed")
    for (method, properties, _), key in zip(fetched, keys, strict=True):
        if key is None:
            channel.basic_nack(method.delivery_tag, requeue=True)
            outcome.failed += 1
            _note(outcome, f"message {properties.message_id}: original routing key unknown")


def _note(outcome: ReplayOutcome, reason: str) -> None:
    assert outcome.reasons is not None
    if reason not in outcome.reasons:
        outcome.reasons.append(reason)
