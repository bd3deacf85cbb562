"""EndpointLanes: the in-flight cap per endpoint, a customer's next row only after the
previous one's 2xx, unsent rows given back on any other answer or when held too long."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from uuid import UUID

from service.webhooks.delivery.lanes import EndpointLanes

ENDPOINT = uuid.uuid4()
OTHER_ENDPOINT = uuid.uuid4()


@dataclass(frozen=True)
class Row:
    sequence: int
    after_delivery_id: UUID | None = None
    endpoint_id: UUID = ENDPOINT
    delivery_id: UUID = field(default_factory=uuid.uuid4)
    claim_token: int = 1


def chain(length: int, endpoint_id: UUID = ENDPOINT) -> list[Row]:
    """One customer's rows, each naming the one before it."""
    rows: list[Row] = []
    for sequence in range(1, length + 1):
        after = rows[-1].delivery_id if rows else None
        rows.append(Row(sequence, after, endpoint_id))
    return rows


def test_at_most_the_cap_per_endpoint_and_a_slot_frees_on_the_answer() -> None:
    lanes = EndpointLanes(cap=2, hold_seconds=60)
    heads = [Row(1) for _ in range(5)] + [Row(1, endpoint_id=OTHER_ENDPOINT)]
    lanes.add(heads)
    taken = lanes.take()
    assert sorted(row.endpoint_id == ENDPOINT for row in taken) == [False, True, True]
    assert lanes.take() == []
    lanes.answered(taken[0] if taken[0].endpoint_id == ENDPOINT else taken[1], succeeded=True)
    assert len(lanes.take()) == 1
    assert lanes.held() == 5


def test_a_customers_next_row_goes_only_after_the_previous_ones_2xx() -> None:
    lanes = EndpointLanes(cap=4, hold_seconds=60)
    first, second, third = chain(3)
    lanes.add([third, first, second])
    assert lanes.take() == [first]
    lanes.answered(first, succeeded=True)
    assert lanes.take() == [second]
    lanes.answered(second, succeeded=True)
    assert lanes.take() == [third]


def test_a_row_after_an_answered_but_unrecorded_2xx_goes_at_once() -> None:
    lanes = EndpointLanes(cap=4, hold_seconds=60)
    first, second = chain(2)
    lanes.add([first])
    lanes.take()
    lanes.answered(first, succeeded=True)
    lanes.add([second])  # claimed while the first's outcome is not yet recorded
    assert lanes.take() == [second]
    lanes.committed({first.delivery_id})
    stray = Row(2, first.delivery_id)  # a recorded predecessor is no longer named
    lanes.add([stray])
    assert lanes.take() == [] and lanes.released() == [stray]


def test_a_failure_gives_back_the_endpoints_unsent_rows_only() -> None:
    lanes = EndpointLanes(cap=1, hold_seconds=60)
    first, second = chain(2)
    other_customer = Row(1)
    elsewhere = Row(1, endpoint_id=OTHER_ENDPOINT)
    lanes.add([first, second, other_customer, elsewhere])
    sent = lanes.take()
    assert set(sent) == {first, elsewhere}
    lanes.answered(first, succeeded=False)
    assert set(lanes.released()) == {second, other_customer}
    assert lanes.take() == [] and lanes.held() == 1  # only ``elsewhere``, in flight


def test_a_row_whose_predecessor_is_not_here_is_given_back() -> None:
    lanes = EndpointLanes(cap=4, hold_seconds=60)
    orphan = Row(2, uuid.uuid4())
    lanes.add([orphan])
    assert lanes.take() == []
    assert lanes.released() == [orphan] and lanes.held() == 0


def test_rows_held_too_long_are_given_back_with_their_followers() -> None:
    lanes = EndpointLanes(cap=4, hold_seconds=0.05)
    first, second = chain(2)
    lanes.add([first, second])
    time.sleep(0.1)
    assert lanes.take() == []
    assert lanes.released() == [first, second] and lanes.held() == 0


def test_release_all_keeps_what_is_being_sent() -> None:
    lanes = EndpointLanes(cap=1, hold_seconds=60)
    first, second = chain(2)
    head = Row(1)
    lanes.add([first, second, head])
    (sending,) = lanes.take()
    lanes.release_all()
    assert {row.delivery_id for row in lanes.released()} == (
        {first.delivery_id, second.delivery_id, head.delivery_id} - {sending.delivery_id}
    )
    lanes.give_back([second])
    assert lanes.released() == [second]
