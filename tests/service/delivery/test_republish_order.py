"""Resend / redeliver in aggregate order, their defaults, and a tenant's bounds."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from service.app import create_app
from service.config import Settings
from tests.support.api import Consumer, post_data
from tests.support.outbox import drain_queue, event_rows, insert_events, set_state

STATUSES = ("inactive", "suspended", "active")


def customer_with_history(client: TestClient, tenant: Consumer) -> list[str]:
    """A customer created then changed three times: four pending events, sequences 1..4."""
    created = client.post("/customer/data", json={"name": "Ada"}, headers=tenant["headers"])
    customer_id = created.json()["data"]["customer_id"]
    for status in STATUSES:
        changed = client.patch(
            f"/customer/data/{customer_id}/status",
            json={"status": status},
            headers=tenant["headers"],
        )
        assert changed.status_code == 200, changed.text
    return [str(event["event_id"]) for event in events_of_customer(client, tenant, customer_id)]


def events_of_customer(
    client: TestClient, tenant: Consumer, customer_id: str
) -> list[dict[str, Any]]:
    page = client.get("/events", params={"customer_id": customer_id}, headers=tenant["headers"])
    items: list[dict[str, Any]] = page.json()["data"]["items"]
    return sorted(items, key=lambda event: event["sequence"])


def queue_order(settings: Settings, queue: str) -> list[tuple[str, int]]:
    """(customer_id, sequence) of every message in the queue, in queue order."""
    messages = drain_queue(settings.broker.url, queue)
    documents = [json.loads(body) for _, _, body in messages]
    assert all(
        properties.headers["x-fintegrate-sequence"] == document["sequence"]
        for (_, properties, _), document in zip(messages, documents, strict=True)
    )
    return [(document["customer_id"], document["sequence"]) for document in documents]


def test_events_carry_contiguous_sequences_per_customer(
    client: TestClient, create_consumer: Callable[..., Consumer]
) -> None:
    tenant = create_consumer()
    first = customer_with_history(client, tenant)
    second = customer_with_history(client, tenant)
    page = client.get("/events", headers=tenant["headers"]).json()["data"]["items"]
    by_customer: dict[str, list[int]] = {}
    for event in page:
        key = event["customer_id"] or "consumer"
        by_customer.setdefault(key, []).append(event["sequence"])
    assert sorted(map(sorted, by_customer.values())) == [[1], [1, 2, 3, 4], [1, 2, 3, 4]]
    assert len(first) == len(second) == 4


def test_resend_defaults_select_events_the_relay_already_retried_many_times(
    client: TestClient, engine: Engine, create_consumer: Callable[..., Consumer]
) -> None:
    tenant = create_consumer()
    stuck = insert_events(engine, tenant["consumer_id"], 2)
    set_state(engine, stuck, publish_try_count=9, publish_failure_reason="unroutable")
    preview = post_data(client, "/events/resend", tenant["headers"], dry_run=True)
    assert set(map(str, preview["event_ids"])) >= set(stuck)


def test_resend_publishes_each_customer_in_sequence_order(
    client: TestClient, settings: Settings, create_consumer: Callable[..., Consumer]
) -> None:
    tenant = create_consumer()
    histories = [customer_with_history(client, tenant) for _ in range(3)]
    data = post_data(client, "/events/resend", tenant["headers"])
    assert data["republished"] == 13 and data["failed"] == 0 and data["held_back"] == 0
    order = queue_order(settings, tenant["queue_name"])
    for customer in {customer for customer, _ in order if customer}:
        assert [seq for who, seq in order if who == customer] == [1, 2, 3, 4]
    assert sum(map(len, histories)) == 12


def test_resend_never_overtakes_an_earlier_pending_event_outside_the_selection(
    client: TestClient, engine: Engine, settings: Settings, create_consumer: Callable[..., Consumer]
) -> None:
    tenant = create_consumer()
    history = customer_with_history(client, tenant)
    only_changes = {"event_types": ["customer_status_change"]}
    data = post_data(client, "/events/resend", tenant["headers"], **only_changes)
    assert (data["matched"], data["republished"], data["held_back"]) == (3, 0, 3)
    assert {row.publish_status for row in event_rows(engine, history).values()} == {"pending"}
    everything = post_data(client, "/events/resend", tenant["headers"])
    assert everything["republished"] == 5  # the consumer_created event and the four
    customer_order = [seq for who, seq in queue_order(settings, tenant["queue_name"]) if who]
    assert customer_order == [1, 2, 3, 4]


def test_a_failing_event_holds_back_only_its_own_customer(
    client: TestClient,
    engine: Engine,
    settings: Settings,
    admin_headers: dict[str, str],
    create_consumer: Callable[..., Consumer],
) -> None:
    healthy, broken = create_consumer(), create_consumer()
    good = customer_with_history(client, healthy)
    bad = customer_with_history(client, broken)
    delete_queue(settings, broken["queue_name"])
    scoped = {"consumer_name": broken["name"]}
    data = post_data(client, "/events/resend", admin_headers, **scoped)
    assert data["republished"] == 0
    assert data["failed"] == 2  # the head of each aggregate: consumer_created, customer seq 1
    assert data["held_back"] == 3
    rows = event_rows(engine, bad)
    assert [rows[i].publish_try_count for i in bad] == [1, 0, 0, 0]
    fine = post_data(client, "/events/resend", admin_headers, consumer_name=healthy["name"])
    assert fine["republished"] == 5
    assert [seq for who, seq in queue_order(settings, healthy["queue_name"]) if who] == [1, 2, 3, 4]
    assert len(good) == 4


def test_redeliver_goes_in_sequence_order(
    client: TestClient, engine: Engine, settings: Settings, create_consumer: Callable[..., Consumer]
) -> None:
    tenant = create_consumer()
    history = customer_with_history(client, tenant)
    set_state(engine, list(reversed(history)), publish_status="published", publish_try_count=1)
    data = post_data(client, "/events/redeliver", tenant["headers"])
    assert data["republished"] == 4
    assert [seq for who, seq in queue_order(settings, tenant["queue_name"]) if who] == [1, 2, 3, 4]


@pytest.fixture
def bounded_client(settings: Settings) -> Any:
    bounded = settings.updated(
        {"republish_tenant_max_per_call": 2, "republish_tenant_per_minute": 3}
    )
    with TestClient(create_app(bounded)) as bounded_client:
        yield bounded_client


def test_tenant_republish_is_bounded_per_call_and_per_minute(
    bounded_client: TestClient,
    engine: Engine,
    admin_headers: dict[str, str],
    create_consumer: Callable[..., Consumer],
) -> None:
    tenant = create_consumer()
    ids = insert_events(engine, tenant["consumer_id"], 6)
    set_state(engine, ids, publish_status="published")
    first = post_data(bounded_client, "/events/redeliver", tenant["headers"], limit=100)
    assert first["matched"] == 2 and first["next_cursor"]
    second = post_data(
        bounded_client, "/events/redeliver", tenant["headers"], cursor=first["next_cursor"]
    )
    assert second["matched"] == 1  # the minute's budget of 3 is now spent
    refused = bounded_client.post(
        "/events/redeliver", json={"cursor": second["next_cursor"]}, headers=tenant["headers"]
    )
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    assert "per minute" in refused.json()["detail"]["status_description"]
    operator = post_data(
        bounded_client, "/events/redeliver", admin_headers, consumer_name=tenant["name"]
    )
    assert operator["matched"] == 6  # operators are not bounded


def delete_queue(settings: Settings, queue: str) -> None:
    vhost = settings.broker.url.rsplit("/", 1)[1]
    assert settings.broker.management_url
    response = httpx.delete(
        f"{settings.broker.management_url}/api/queues/{vhost}/{queue}", timeout=10
    )
    assert response.status_code in (204, 404)
