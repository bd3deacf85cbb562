"""Events read API: tenant-scoped listing with filters and cursor, and lookup by id."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient

from tests.support.api import assert_envelope


def list_events(client: TestClient, consumer: dict[str, Any], **params: Any) -> Any:
    response = client.get("/events", params=params, headers=consumer["headers"])
    return assert_envelope(response, 200)


def test_events_filter_by_customer_type_status_and_since(
    client: TestClient, create_consumer: Callable, create_customer: Callable
) -> None:
    consumer = create_consumer()
    first, second = create_customer(consumer), create_customer(consumer)
    path = f"/customer/data/{first['customer_id']}/status"
    client.patch(path, json={"status": "suspended"}, headers=consumer["headers"])

    everything = list_events(client, consumer)
    types = [item["event_type"] for item in everything["items"]]
    assert types == [
        "consumer_created",
        "customer_creation",
        "customer_creation",
        "customer_status_change",
    ]
    mine = list_events(client, consumer, customer_id=first["customer_id"])
    assert {item["customer_id"] for item in mine["items"]} == {first["customer_id"]}
    assert mine["count"] == 2
    changes = list_events(client, consumer, event_type="customer_status_change")
    assert changes["items"][0]["payload"]["new_status"] == "suspended"
    assert list_events(client, consumer, publish_status="published")["items"] == []
    assert list_events(client, consumer, deliver_status="pending")["count"] == 4
    since = everything["items"][2]["created_at"]
    later = list_events(client, consumer, since=since)
    assert second["customer_id"] in {item["customer_id"] for item in later["items"]}
    assert all(item["created_at"] >= since for item in later["items"])


def test_events_page_with_cursor(
    client: TestClient, create_consumer: Callable, create_customer: Callable
) -> None:
    consumer = create_consumer()
    for _ in range(4):
        create_customer(consumer)
    first = list_events(client, consumer, limit=3)
    assert first["count"] == 3 and first["next_cursor"]
    rest = list_events(client, consumer, limit=3, cursor=first["next_cursor"])
    assert rest["count"] == 2 and rest["next_cursor"] is None
    ids = [item["event_id"] for item in first["items"] + rest["items"]]
    assert len(set(ids)) == 5


def test_event_lookup_and_unknown_filters(
    client: TestClient, create_consumer: Callable, create_customer: Callable
) -> None:
    consumer = create_consumer()
    create_customer(consumer)
    event = list_events(client, consumer, event_type="customer_creation")["items"][0]
    shown = client.get(f"/events/{event['event_id']}", headers=consumer["headers"])
    assert assert_envelope(shown, 200) == {**event, "webhooks": []}  # no endpoint: no deliveries
    missing = client.get(
        "/events/00000000-0000-4000-8000-000000000000", headers=consumer["headers"]
    )
    assert_envelope(missing, 404)
    unknown = client.get("/events?event_type=customer.creation", headers=consumer["headers"])
    assert_envelope(unknown, 422)
    assert_envelope(client.get("/events?limit=0", headers=consumer["headers"]), 422)
    assert_envelope(client.get("/events?limit=201", headers=consumer["headers"]), 422)
