"""POST /customer/data/{id}/erase: personal data redacted in one transaction, audited, one
customer_erasure event; other customers and tenants untouched; foreign ids look missing."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from service.messaging import topology
from tests.support.api import assert_envelope

Consumer = dict[str, Any]
ERASED = {"erased": True}


@pytest.fixture
def tenant(create_consumer: Callable[..., Consumer]) -> Consumer:
    return create_consumer()


def customer_with_history(
    client: TestClient, tenant: Consumer, create_customer: Callable[..., dict[str, Any]]
) -> dict[str, Any]:
    customer = create_customer(tenant, email="ada@example.com")
    path = f"/customer/data/{customer['customer_id']}"
    headers = tenant["headers"]
    assert client.put(f"{path}/tags", json={"tags": {"plan": "gold"}}, headers=headers).is_success
    analytics = client.post(f"{path}/analytics", json={"metrics": {"ltv": 10}}, headers=headers)
    assert analytics.is_success
    assert client.patch(f"{path}/status", json={"status": "inactive"}, headers=headers).is_success
    return customer


def events_of(engine: Engine, customer_id: str) -> list[Any]:
    """The customer's events with their ids, oldest first."""
    return rows(
        engine,
        "SELECT event_id, event_type, payload_json FROM customer_events"
        " WHERE customer_id = :id ORDER BY created_at, event_id",
        customer_id,
    )


def rows(engine: Engine, sql: str, customer_id: str) -> list[Any]:
    with engine.connect() as connection:
        return connection.execute(text(sql), {"id": customer_id}).all()


def test_erasure_redacts_everything_personal_in_one_go(
    client: TestClient, tenant: Consumer, create_customer: Callable, engine: Engine
) -> None:
    customer = customer_with_history(client, tenant, create_customer)
    bystander = customer_with_history(client, tenant, create_customer)
    customer_id = customer["customer_id"]

    response = client.post(f"/customer/data/{customer_id}/erase", headers=tenant["headers"])

    erased = assert_envelope(response, 200)
    assert erased["already_erased"] is False
    assert (erased["tags_removed"], erased["analytics_removed"]) == (1, 1)
    assert erased["events_redacted"] == 2  # creation and status change
    shown = assert_envelope(
        client.get(f"/customer/data/{customer_id}", headers=tenant["headers"]), 200
    )
    assert shown["email"] is None and "Ada" not in shown["name"] and shown["name"] == "[erased]"
    assert rows(engine, "SELECT 1 FROM customer_tags WHERE customer_id = :id", customer_id) == []
    assert (
        rows(engine, "SELECT 1 FROM customer_analytics WHERE customer_id = :id", customer_id) == []
    )
    events = events_of(engine, customer_id)
    assert [e.event_type for e in events][-1] == "customer_erasure"
    assert all(e.payload_json == ERASED for e in events[:-1])
    assert events[-1].payload_json["customer_id"] == customer_id
    assert events[-1].event_id == uuid.UUID(erased["event_id"])
    assert all(e.payload_json != ERASED for e in events_of(engine, bystander["customer_id"]))
    [audit] = rows(
        engine,
        "SELECT action, detail_json FROM audit_log WHERE action = 'customer_erasure' "
        "AND detail_json->>'customer_id' = :id",
        customer_id,
    )
    assert audit.detail_json["events_redacted"] == 2


def test_a_second_erasure_changes_nothing(
    client: TestClient, tenant: Consumer, create_customer: Callable, engine: Engine
) -> None:
    customer = create_customer(tenant)
    path = f"/customer/data/{customer['customer_id']}/erase"
    first = assert_envelope(client.post(path, headers=tenant["headers"]), 200)
    second = assert_envelope(client.post(path, headers=tenant["headers"]), 200)
    assert second["already_erased"] is True and second["event_id"] is None
    assert second["erased_at"] == first["erased_at"]
    assert [e.event_type for e in events_of(engine, customer["customer_id"])].count(
        "customer_erasure"
    ) == 1


def test_a_deleted_customer_can_still_be_erased(
    client: TestClient, tenant: Consumer, create_customer: Callable
) -> None:
    customer = create_customer(tenant)
    path = f"/customer/data/{customer['customer_id']}"
    assert client.delete(path, headers=tenant["headers"]).is_success
    assert assert_envelope(client.post(f"{path}/erase", headers=tenant["headers"]), 200)


def test_another_tenants_customer_answers_like_a_missing_one(
    client: TestClient,
    tenant: Consumer,
    create_consumer: Callable[..., Consumer],
    create_customer: Callable,
    engine: Engine,
) -> None:
    customer = create_customer(tenant)
    intruder = create_consumer()
    foreign = client.post(
        f"/customer/data/{customer['customer_id']}/erase", headers=intruder["headers"]
    )
    missing = client.post(f"/customer/data/{uuid.uuid4()}/erase", headers=intruder["headers"])
    assert_envelope(foreign, 404)
    assert foreign.json() == missing.json()
    assert all(e.payload_json != ERASED for e in events_of(engine, customer["customer_id"]))


def test_the_append_only_rule_allows_the_erasure_marker_and_nothing_else(
    client: TestClient, tenant: Consumer, create_customer: Callable, engine: Engine
) -> None:
    customer = create_customer(tenant)
    [event] = events_of(engine, customer["customer_id"])
    with engine.connect() as connection:
        with pytest.raises(DBAPIError, match="may only be erased"):
            connection.execute(
                text(
                    'UPDATE customer_events SET payload_json = \'{"name": "x"}\' '
                    "WHERE event_id = :id"
                ),
                {"id": event.event_id},
            )
        connection.rollback()
        with pytest.raises(DBAPIError, match="append-only"):
            connection.execute(
                text(
                    "UPDATE customer_events SET payload_json = fintegrate_erased_payload(), "
                    "event_type = 'customer_erasure' WHERE event_id = :id"
                ),
                {"id": event.event_id},
            )


def test_customer_erasure_routes_to_the_tenant_queue_only() -> None:
    assert topology.routing_key("customer_erasure", "acme") == "customer.erasure.acme"
    assert "customer.erasure.acme" in topology.queue_bindings("acme")
    assert topology.dlq_routing_key("acme") not in topology.queue_bindings("acme")
