"""The worker's recovery reads: GET /events/after-sequence and GET /events/lost."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from tests.support.api import Consumer, assert_envelope, changed_customer, confirm_receipt

BACKDATE_PUBLISH = text(
    "UPDATE customer_events SET publish_status = 'published', "
    "published_at = now() - interval '1 hour' WHERE customer_id = :customer_id"
)


def after_sequence(client: TestClient, tenant: Consumer, **params: Any) -> list[Any]:
    response = client.get("/events/after-sequence", params=params, headers=tenant["headers"])
    return list(assert_envelope(response, 200)["items"])


def lost(client: TestClient, tenant: Consumer, older_than_ms: int) -> list[str]:
    response = client.get(
        "/events/lost", params={"older_than_ms": older_than_ms}, headers=tenant["headers"]
    )
    return [item["event_id"] for item in assert_envelope(response, 200)["items"]]


def test_after_sequence_answers_one_aggregate_in_sequence_order_within_bounds(
    client: TestClient, create_consumer: Callable[..., Consumer], create_customer: Callable
) -> None:
    tenant, stranger = create_consumer(), create_consumer()
    customer_id, events = changed_customer(client, tenant, create_customer, 4)
    items = after_sequence(client, tenant, customer_id=customer_id, after_sequence=1)
    assert [item["sequence"] for item in items] == [2, 3, 4, 5]
    assert [item["event_id"] for item in items] == [e["event_id"] for e in events[1:]]
    bounded = after_sequence(
        client, tenant, customer_id=customer_id, after_sequence=1, through_sequence=3, limit=1
    )
    assert [item["sequence"] for item in bounded] == [2]
    assert after_sequence(client, stranger, customer_id=customer_id, after_sequence=0) == []
    unknown = str(uuid.uuid4())
    assert after_sequence(client, tenant, customer_id=unknown, after_sequence=0) == []
    [created] = after_sequence(client, tenant, after_sequence=0)  # the consumer level
    assert created["event_type"] == "consumer_created" and created["customer_id"] is None


def test_after_sequence_refuses_bad_input_with_an_envelope(
    client: TestClient, create_consumer: Callable[..., Consumer]
) -> None:
    tenant = create_consumer()
    for params in (
        {},
        {"after_sequence": -1},
        {"after_sequence": 0, "customer_id": "nope"},
        {"after_sequence": 0, "limit": 501},
        {"after_sequence": 0, "through_sequence": 0},
    ):
        response = client.get("/events/after-sequence", params=params, headers=tenant["headers"])
        assert_envelope(response, 422)
    assert_envelope(client.get("/events/after-sequence", params={"after_sequence": 0}), 401)
    assert_envelope(client.get("/events/lost", params={"older_than_ms": 1}), 401)
    response = client.get("/events/lost", params={"older_than_ms": 0}, headers=tenant["headers"])
    assert_envelope(response, 422)


def test_lost_lists_published_undelivered_events_older_than_asked_of_this_tenant_only(
    client: TestClient,
    create_consumer: Callable[..., Consumer],
    create_customer: Callable,
    engine: Engine,
) -> None:
    tenant, stranger = create_consumer(), create_consumer()
    customer_id, events = changed_customer(client, tenant, create_customer, 1)
    assert lost(client, tenant, 1) == []  # not published yet: the relay still has them
    with engine.begin() as connection:
        connection.execute(BACKDATE_PUBLISH, {"customer_id": customer_id})
    time.sleep(0.05)
    assert lost(client, tenant, 1) == [event["event_id"] for event in events]
    assert lost(client, stranger, 1) == []
    assert lost(client, tenant, 3_600_000) == []  # created just now: cannot have expired
    first = client.get(
        "/events/lost", params={"older_than_ms": 1, "limit": 1}, headers=tenant["headers"]
    )
    page = assert_envelope(first, 200)
    assert [item["event_id"] for item in page["items"]] == [events[0]["event_id"]]
    params = {"older_than_ms": 1, "limit": 1, "cursor": page["next_cursor"]}
    second = client.get("/events/lost", params=params, headers=tenant["headers"])
    assert [item["event_id"] for item in assert_envelope(second, 200)["items"]] == [
        events[1]["event_id"]
    ]
    confirm_receipt(client, tenant, events[0]["event_id"], "processed")
    confirm_receipt(client, tenant, events[1]["event_id"], "failed")  # a handler failure, not lost
    assert lost(client, tenant, 1) == []
