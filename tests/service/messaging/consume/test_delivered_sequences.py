"""DeliveredSequences: the worker's cache of last delivered sequences, batched look-ups."""

from __future__ import annotations

import threading
import uuid
from typing import Any

from service.messaging.consume.receipts import DeliveredSequences
from service.messaging.messages import EventMessage


def event(customer_id: str | None, sequence: int | None) -> EventMessage:
    return EventMessage(
        event_id=str(uuid.uuid4()),
        event_type="customer_status_change",
        consumer_name="acme",
        consumer_id="00000000-0000-0000-0000-00000000000a",
        customer_id=customer_id,
        occurred_at="",
        payload={},
        metadata={},
        raw={},
        sequence=sequence,
    )


class Answers:
    """A look-up answering from a dict and recording each call's customer ids."""

    def __init__(self, delivered: dict[str | None, int], gate: threading.Event | None = None):
        self.delivered = delivered
        self.calls: list[list[str | None]] = []
        self.gate = gate

    def __call__(self, customer_ids: list[str | None]) -> dict[str | None, int] | None:
        self.calls.append(list(customer_ids))
        if self.gate is not None:
            assert self.gate.wait(10)
        return {c: self.delivered.get(c, 0) for c in customer_ids}


def test_expected_aggregates_are_asked_together_and_then_cached() -> None:
    customers = [str(uuid.uuid4()) for _ in range(5)]
    answers = Answers({customers[0]: 3, None: 7})
    cache = DeliveredSequences(answers)
    messages = [event(c, 1) for c in customers] + [event(None, 1)]
    for message in messages:
        cache.expect(message)
    assert [cache.last_delivered(m) for m in messages] == [3, 0, 0, 0, 0, 7]
    assert len(answers.calls) == 1 and sorted(map(str, answers.calls[0])) == sorted(
        map(str, [*customers, None])
    )


def test_own_confirmations_raise_the_cached_sequence_never_lower_it() -> None:
    customer = str(uuid.uuid4())
    cache = DeliveredSequences(Answers({customer: 4}))
    assert cache.last_delivered(event(customer, 5)) == 4
    cache.confirmed(event(customer, 5))
    cache.confirmed(event(customer, 2))  # an older one confirmed late
    assert cache.last_delivered(event(customer, 6)) == 5


def test_eviction_asks_again_and_unsequenced_messages_ask_nothing() -> None:
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    answers = Answers({first: 1, second: 2})
    cache = DeliveredSequences(answers, capacity=1)
    assert cache.last_delivered(event(first, 2)) == 1
    assert cache.last_delivered(event(second, 3)) == 2  # evicts first
    assert cache.last_delivered(event(first, 2)) == 1
    assert cache.last_delivered(event(first, None)) == 0
    assert answers.calls == [[first], [second], [first]]


def test_a_lane_missing_an_aggregate_being_asked_waits_for_that_answer() -> None:
    customer = str(uuid.uuid4())
    gate = threading.Event()
    answers = Answers({customer: 9}, gate)
    cache = DeliveredSequences(answers)
    results: list[Any] = []
    lanes = [
        threading.Thread(target=lambda: results.append(cache.last_delivered(event(customer, 1))))
        for _ in range(3)
    ]
    for lane in lanes:
        lane.start()
    gate.set()
    for lane in lanes:
        lane.join(10)
    assert results == [9, 9, 9] and len(answers.calls) == 1


def test_stopping_before_an_answer_caches_nothing() -> None:
    customer = str(uuid.uuid4())
    calls: list[list[str | None]] = []

    def stopping(customer_ids: list[str | None]) -> None:
        calls.append(customer_ids)

    cache = DeliveredSequences(stopping)
    assert cache.last_delivered(event(customer, 1)) is None
    assert cache.last_delivered(event(customer, 1)) is None
    assert len(calls) == 2
