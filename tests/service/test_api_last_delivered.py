"""GET /events/last-delivered: the worker's stale-duplicate look-up, tenant-scoped."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient

from tests.support.api import assert_envelope

Consumer = dict[str, Any]


def last_delivered(client: TestClient, tenant: Consumer, customer_id: str | None = None) -> Any:
    params = {"customer_id": customer_id} if customer_id else {}
    response = client.get("/events/last-delivered", params=params, headers=tenant["headers"])
    return assert_envelope(response, 200)


def customer_events(client: TestClient, tenant: Consumer, customer_id: str) -> list[Any]:
    response = client.get("/events", params={"customer_id": customer_id}, headers=tenant["headers"])
    return list(assert_envelope(response, 200)["items"])


def confirm(client: TestClient, tenant: Consumer, event_id: str, status: str) -> None:
    response = client.post(
        "/events/confirm-delivery",
        json={"event_id": event_id, "status": status},
        headers=tenant["headers"],
    )
    assert_envelope(response, 200)


def changed_customer(
    client: TestClient, tenant: Consumer, create_customer: Callable[..., Any], changes: int
) -> tuple[str, list[Any]]:
    """A new customer with ``changes`` status changes: its id and events in sequence order."""
    customer_id = create_customer(tenant)["customer_id"]
    for index in range(changes):
        status = "suspended" if index % 2 == 0 else "active"
        path = f"/customer/data/{customer_id}/status"
        client.patch(path, json={"status": status}, headers=tenant["headers"])
    events = sorted(customer_events(client, tenant, customer_id), key=lambda e: e["sequence"])
    return customer_id, events


def test_highest_delivered_sequence_not_the_latest_receipt(
    client: TestClient, create_consumer: Callable[..., Consumer], create_customer: Callable
) -> None:
    tenant = create_consumer()
    customer_id, events = changed_customer(client, tenant, create_customer, 3)
    assert [event["sequence"] for event in events] == [1, 2, 3, 4]
    nothing = last_delivered(client, tenant, customer_id)
    assert nothing == {"aggregate_id": customer_id, "sequence": 0, "event_id": None}

    confirm(client, tenant, events[2]["event_id"], "processed")
    confirm(client, tenant, events[0]["event_id"], "processed")  # an older one, later
    confirm(client, tenant, events[3]["event_id"], "failed")  # not delivered
    answer = last_delivered(client, tenant, customer_id)
    assert answer == {"aggregate_id": customer_id, "sequence": 3, "event_id": events[2]["event_id"]}


def test_omitted_customer_is_the_consumer_level_aggregate(
    client: TestClient, create_consumer: Callable[..., Consumer], create_customer: Callable
) -> None:
    tenant = create_consumer()
    _, [creation] = changed_customer(client, tenant, create_customer, 0)
    confirm(client, tenant, creation["event_id"], "processed")
    assert last_delivered(client, tenant)["sequence"] == 0  # a customer's event is not it
    response = client.get(
        "/events", params={"event_type": "consumer_created"}, headers=tenant["headers"]
    )
    [created] = assert_envelope(response, 200)["items"]
    confirm(client, tenant, created["event_id"], "received")
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
        confirm(client, owner, event["event_id"], "processed")
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
    confirm(client, tenant, first_events[1]["event_id"], "processed")
    confirm(client, tenant, second_events[0]["event_id"], "received")
    confirm(client, stranger, foreign_events[0]["event_id"], "processed")
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
