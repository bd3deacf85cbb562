"""GET /events/last-delivered: the worker's stale-duplicate look-up, tenant-scoped."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient

from tests.support.api import Consumer, assert_envelope, changed_customer, confirm_receipt


def last_delivered(client: TestClient, tenant: Consumer, customer_id: str | None = None) -> Any:
    params = {"customer_id": customer_id} if customer_id else {}
    response = client.get("/events/last-delivered", params=params, headers=tenant["headers"])
    return assert_envelope(response, 200)


def test_highest_delivered_sequence_not_the_latest_receipt(
    client: TestClient, create_consumer: Callable[..., Consumer], create_customer: Callable
) -> None:
    tenant = create_consumer()
    customer_id, events = changed_customer(client, tenant, create_customer, 3)
    assert [event["sequence"] for event in events] == [1, 2, 3, 4]
    nothing = last_delivered(client, tenant, customer_id)
    assert nothing == {"aggregate_id": customer_id, "sequence": 0, "event_id": None}

    confirm_receipt(client, tenant, events[2]["event_id"], "processed")
    confirm_receipt(client, tenant, events[0]["event_id"], "processed")  # an older one, later
    confirm_receipt(client, tenant, events[3]["event_id"], "failed")  # not delivered
    answer = last_delivered(client, tenant, customer_id)
    assert answer == {"aggregate_id": customer_id, "sequence": 3, "event_id": events[2]["event_id"]}


def test_omitted_customer_is_the_consumer_level_aggregate(
    client: TestClient, create_consumer: Callable[..., Consumer], create_customer: Callable
) -> None:
    tenant = create_consumer()
    _, [creation] = changed_customer(client, tenant, create_customer, 0)
    confirm_receipt(client, tenant, creation["event_id"], "processed")
    assert last_delivered(client, tenant)["sequence"] == 0  # a customer's event is not it
    response = client.get(
        "/events", params={"event_type": "consumer_created"}, headers=tenant["headers"]
    )
    [created] = assert_envelope(response, 200)["items"]
    confirm_receipt(client, tenant, created["event_id"], "received")
    assert last_delivered(client, tenant) == {
        "aggregate_id": tenant["consumer_id"],
        "sequence": 1,
        "event_id": created["event_id"],
    }


def test_another_tenants_customer_answers_like_an_unknown_one(
    client: TestClient, create_consumer: Callable[..., Consumer], create_customer: Callable
) -> None:
    owner, stranger = create_consumer(), create_consumer()
    customer_id, events = changed_customer(client, owner, create_customer, 1)
    for event in events:
        confirm_receipt(client, owner, event["event_id"], "processed")
    assert last_delivered(client, owner, customer_id)["sequence"] == 2
    foreign = last_delivered(client, stranger, customer_id)
    unknown_id = str(uuid.uuid4())
    unknown = last_delivered(client, stranger, unknown_id)
    assert foreign == {"aggregate_id": customer_id, "sequence": 0, "event_id": None}
    assert unknown == {"aggregate_id": unknown_id, "sequence": 0, "event_id": None}


def test_bad_customer_id_and_missing_key_are_enveloped_errors(
    client: TestClient, create_consumer: Callable[..., Consumer]
) -> None:
    tenant = create_consumer()
    bad = client.get(
        "/events/last-delivered", params={"customer_id": "nope"}, headers=tenant["headers"]
    )
    assert_envelope(bad, 422)
    assert_envelope(client.get("/events/last-delivered"), 401)


def test_many_aggregates_at_once_in_the_order_asked(
    client: TestClient, create_consumer: Callable[..., Consumer], create_customer: Callable
) -> None:
    tenant, stranger = create_consumer(), create_consumer()
    first, first_events = changed_customer(client, tenant, create_customer, 2)
    second, second_events = changed_customer(client, tenant, create_customer, 0)
    foreign, foreign_events = changed_customer(client, stranger, create_customer, 0)
    confirm_receipt(client, tenant, first_events[1]["event_id"], "processed")
    confirm_receipt(client, tenant, second_events[0]["event_id"], "received")
    confirm_receipt(client, stranger, foreign_events[0]["event_id"], "processed")
    unknown = str(uuid.uuid4())
    body = {"customer_ids": [second, unknown, foreign, first], "include_consumer": True}
    response = client.post("/events/last-delivered", json=body, headers=tenant["headers"])
    items = assert_envelope(response, 200)["items"]
    assert items == [
        {"aggregate_id": second, "sequence": 1, "event_id": second_events[0]["event_id"]},
        {"aggregate_id": unknown, "sequence": 0, "event_id": None},
        {"aggregate_id": foreign, "sequence": 0, "event_id": None},  # like an unknown one
        {"aggregate_id": first, "sequence": 2, "event_id": first_events[1]["event_id"]},
        {"aggregate_id": tenant["consumer_id"], "sequence": 0, "event_id": None},
    ]


def test_many_refuses_bad_ids_too_many_and_unknown_fields(
    client: TestClient, create_consumer: Callable[..., Consumer]
) -> None:
    tenant = create_consumer()
    for body in (
        {"customer_ids": ["nope"]},
        {"customer_ids": [str(uuid.uuid4()) for _ in range(101)]},
        {"customer_ids": [], "extra": 1},
        {"customer_ids": [], "include_consumer": 0},
    ):
        response = client.post("/events/last-delivered", json=body, headers=tenant["headers"])
        assert_envelope(response, 422)
    assert_envelope(client.post("/events/last-delivered", json={"customer_ids": []}), 401)
