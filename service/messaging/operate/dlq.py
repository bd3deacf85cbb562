"""Dead-letter replay: move a tenant's DLQ messages back to its queue, safely and in order.

Each message is republished through the exchange with its ORIGINAL routing key (the first
``x-death`` entry; else derived from the message type), marked ``x-fintegrate-replayed``
and counted in ``x-fintegrate-replay-count``. A dead letter is acked from the DLQ only
after its republish was confirmed and routed; otherwise it is put back.

Order: the fetched dead letters are grouped by aggregate (the customer, else the consumer)
and sorted by ``sequence``; they go out in *waves* like ``ordered.publish_runs``: the next
dead letter of an aggregate only after the previous one was confirmed, and a failure holds
back only the rest of its own aggregate. Staleness: a dead letter whose sequence is at or
below the last delivered one of its aggregate would be skipped by the worker as a stale
duplicate; with a ``DeliveredLookup`` such letters stay in the DLQ and are reported.
Payloads: with a ``PayloadLookup`` each event's payload is re-read from the database before
it goes out, so a letter of a customer erased since is sent with the erased payload.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.messaging import topology
from service.messaging.messages import (
    REPLAYED_HEADER,
    EventMessage,
    InvalidMessage,
    parse_message,
    resent_properties,
)
from service.messaging.publish.publisher import ConfirmingPublisher, OutgoingMessage

log = logging.getLogger(__name__)

REPLAY_COUNT_HEADER = "x-fintegrate-replay-count"
LISTED_STALE_IDS = 50
HELD_BEHIND_FAILURE = "held back: an earlier dead letter of its customer was not replayed"

# (consumer_id, customer_ids) -> {customer_id or None (consumer-level): last delivered}
DeliveredLookup = Callable[[str, list[str]], dict[str | None, int]]
# event ids -> their payloads as the database holds them now (absent: unknown there)
PayloadLookup = Callable[[list[str]], dict[str, Any]]


@dataclass
class ReplayOutcome:
    """Counts of one replay run; ``stale`` dead letters were left in the DLQ."""

    requested: int
    replayed: int = 0
    failed: int = 0
    stale: int = 0
    stale_event_ids: list[str] = field(default_factory=list)  # the first LISTED_STALE_IDS
    reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DeadLetter:
    """One fetched dead letter; ``event`` is None when its body is not a valid event."""

    method: Any
    properties: Any
    body: bytes
    routing_key: str | None
    event: EventMessage | None

    @property
    def aggregate(self) -> tuple[str, str] | None:
        """The aggregate it orders within, when it carries a sequence."""
        if self.event is None or self.event.sequence is None:
            return None
        return (self.event.consumer_id or "", self.event.aggregate_key)


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
    return OutgoingMessage(routing_key, body, resent_properties(properties, headers))


def replay_dead_letters(
    channel: Any,
    publisher: ConfirmingPublisher,
    consumer_name: str,
    limit: int,
    on_progress: Callable[[int], None] = lambda _count: None,
    last_delivered: DeliveredLookup | None = None,
    current_payloads: PayloadLookup | None = None,
) -> ReplayOutcome:
    """Move up to ``limit`` dead letters back in aggregate order.

    With ``last_delivered``, stale dead letters stay in the DLQ (counted, ids listed);
    without it every letter is replayed. With ``current_payloads`` each event goes out with
    the payload the database holds now. Nothing is published before the look-ups answered.
    """
    outcome = ReplayOutcome(requested=limit)
    letters = [
        _dead_letter(consumer_name, *item)
        for item in _fetch(channel, topology.dlq_name(consumer_name), limit)
    ]
    for letter in letters:
        if letter.routing_key is None:
            reason = f"message {letter.properties.message_id}: original routing key unknown"
            _put_back(channel, letter, outcome, reason)
    sendable = [letter for letter in letters if letter.routing_key is not None]
    if last_delivered is not None:
        stale = _stale(sendable, last_delivered)
        for letter in stale:
            channel.basic_nack(letter.method.delivery_tag, requeue=True)
            _note_stale(outcome, letter)
        left = {id(letter) for letter in stale}
        sendable = [letter for letter in sendable if id(letter) not in left]
    if current_payloads is not None:
        sendable = _with_current_payloads(sendable, current_payloads)
    on_progress(len(letters) - len(sendable))
    _replay_in_waves(channel, publisher, aggregate_runs(sendable), outcome, on_progress)
    return outcome


def aggregate_runs(letters: Sequence[DeadLetter]) -> list[list[DeadLetter]]:
    """One run per aggregate in sequence order; a letter without a sequence runs alone."""
    runs: dict[tuple[str, str], list[DeadLetter]] = defaultdict(list)
    alone: list[list[DeadLetter]] = []
    for letter in letters:
        key = letter.aggregate
        if key is None:
            alone.append([letter])
        else:
            runs[key].append(letter)
    ordered = [sorted(run, key=_sequence) for run in runs.values()]
    return ordered + alone


def _replay_in_waves(
    channel: Any,
    publisher: ConfirmingPublisher,
    runs: list[list[DeadLetter]],
    outcome: ReplayOutcome,
    on_progress: Callable[[int], None],
) -> None:
    """Wave ``i`` carries the ``i``-th letter of every run still going; failures end runs."""
    active, position = runs, 0
    while active:
        wave = [run[position] for run in active]
        results = publisher.publish_batch(
            [
                replay_message(str(letter.routing_key), letter.properties, letter.body)
                for letter in wave
            ]
        )
        going = []
        for run, letter, result in zip(active, wave, results, strict=True):
            if result.ok:
                channel.basic_ack(letter.method.delivery_tag)
                outcome.replayed += 1
                if position + 1 < len(run):
                    going.append(run)
                continue
            _put_back(channel, letter, outcome, _refusal(result.reason))
            for held in run[position + 1 :]:
                _put_back(channel, held, outcome, HELD_BEHIND_FAILURE)
        on_progress(len(wave))
        active, position = going, position + 1


def _refusal(reason: str | None) -> str:
    """Why a republish failed, in operator words: a nack means the tenant queue is full."""
    if reason and "nack" in reason:
        return (
            f"{reason}: the tenant queue is full (x-overflow reject-publish at its "
            "x-max-length); replay again once its worker has caught up"
        )
    return reason or "not confirmed"


def _fetch(channel: Any, dlq: str, count: int) -> list[tuple[Any, Any, bytes]]:
    """Up to ``count`` dead letters, unacked: all of them, so they can be put in order."""
    fetched = []
    for _ in range(count):
        method, properties, body = channel.basic_get(dlq, auto_ack=False)
        if method is None:
            break
        fetched.append((method, properties, body))
    return fetched


def _dead_letter(consumer_name: str, method: Any, properties: Any, body: bytes) -> DeadLetter:
    try:
        event: EventMessage | None = parse_message(body)
    except InvalidMessage:
        event = None  # a poison message: replayed as it is, ordered with nothing
    key = original_routing_key(consumer_name, method, properties)
    return DeadLetter(method, properties, body, key, event)


def _stale(letters: list[DeadLetter], last_delivered: DeliveredLookup) -> list[DeadLetter]:
    """The letters at or below their aggregate's last delivered sequence."""
    by_consumer: dict[str, list[DeadLetter]] = defaultdict(list)
    for letter in letters:
        if _checkable(letter.event):
            by_consumer[str(_event(letter).consumer_id)].append(letter)
    stale = []
    for consumer_id, candidates in by_consumer.items():
        customers = sorted(
            {str(_event(c).customer_id) for c in candidates if _event(c).customer_id}
        )
        known = last_delivered(consumer_id, customers)
        stale += [c for c in candidates if _sequence(c) <= known.get(_event(c).customer_id, 0)]
    return stale


def _with_current_payloads(letters: list[DeadLetter], lookup: PayloadLookup) -> list[DeadLetter]:
    """The letters with each event's payload re-read; letters the database does not know (or
    whose payload did not change) go out as they are."""
    ids = [
        _event(letter).event_id
        for letter in letters
        if _checkable(letter.event) and _is_uuid(_event(letter).event_id)
    ]
    payloads = lookup(ids) if ids else {}
    refreshed = []
    for letter in letters:
        event = letter.event
        current = payloads.get(event.event_id) if event is not None else None
        if event is None or current is None or current == event.payload:
            refreshed.append(letter)
            continue
        document = {**event.raw, "payload": current}
        body = json.dumps(document, separators=(",", ":")).encode()
        refreshed.append(dataclasses.replace(letter, body=body, event=parse_message(body)))
    return refreshed


def _event(letter: DeadLetter) -> EventMessage:
    assert letter.event is not None
    return letter.event


def _sequence(letter: DeadLetter) -> int:
    return _event(letter).sequence or 0


def _checkable(event: EventMessage | None) -> bool:
    """Whether the event names its aggregate well enough to be looked up."""
    return (
        event is not None
        and event.sequence is not None
        and _is_uuid(event.consumer_id)
        and (event.customer_id is None or _is_uuid(event.customer_id))
    )


def _is_uuid(value: str | None) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return value is not None


def _put_back(channel: Any, letter: DeadLetter, outcome: ReplayOutcome, reason: str) -> None:
    """Back into the DLQ, counted as failed with its reason (each reason listed once)."""
    channel.basic_nack(letter.method.delivery_tag, requeue=True)
    outcome.failed += 1
    if reason not in outcome.reasons:
        outcome.reasons.append(reason)


def _note_stale(outcome: ReplayOutcome, letter: DeadLetter) -> None:
    outcome.stale += 1
    if len(outcome.stale_event_ids) < LISTED_STALE_IDS and letter.event is not None:
        outcome.stale_event_ids.append(letter.event.event_id)
