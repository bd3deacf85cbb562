"""Tenant isolation: another tenant's ids answer byte-for-byte like ids that do not exist."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from tests.support.api import TENANT_ENDPOINTS, assert_envelope, tenant_row_counts


@pytest.fixture
def victim(
    client: TestClient, create_consumer: Callable, create_customer: Callable, engine: Engine
) -> dict[str, Any]:
    """A tenant with one tagged customer, its ids and its row counts."""
    owner = create_consumer()
    customer = create_customer(owner)
    path = f"/customer/data/{customer['customer_id']}/tags"
    client.put(path, json={"tags": {"tier": "gold"}}, headers=owner["headers"])
    with engine.connect() as connection:
        event_id = connection.execute(
            text("SELECT event_id FROM customer_events WHERE customer_id = :id"),
            {"id": customer["customer_id"]},
        ).scalar_one()
    return {
        "customer_id": customer["customer_id"],
        "event_id": str(event_id),
        "consumer_id": owner["consumer_id"],
    }


@pytest.mark.parametrize(("method", "template", "body"), TENANT_ENDPOINTS)
def test_foreign_ids_answer_exactly_like_missing_ones(
    client: TestClient,
    create_consumer: Callable,
    engine: Engine,
    victim: dict[str, Any],
    method: str,
    template: str,
    body: dict[str, Any] | None,
) -> None:
    attacker = create_consumer()
    missing = {name: str(uuid.uuid4()) for name in victim}
    before = tenant_row_counts(engine, victim["consumer_id"])

    foreign = client.request(
        method, template.format(**victim), json=body, headers=attacker["headers"]
    )
    absent = client.request(
        method, template.format(**missing), json=body, headers=attacker["headers"]
    )

    assert_envelope(foreign, 404)
    assert foreign.content == absent.content
    assert tenant_row_counts(engine, victim["consumer_id"]) == before


def test_listings_show_only_the_tenants_own_rows(
    client: TestClient, create_consumer: Callable, victim: dict[str, Any]
) -> None:
    attacker = create_consumer()
    customers = assert_envelope(client.get("/customer/data", headers=attacker["headers"]), 200)
    assert customers["items"] == []
    events = client.get(
        "/events", params={"customer_id": victim["customer_id"]}, headers=attacker["headers"]
    )
    assert assert_envelope(events, 200)["items"] == []
    consumers = assert_envelope(client.get("/consumer/data", headers=attacker["headers"]), 200)
    assert [item["consumer_id"] for item in consumers["items"]] == [attacker["consumer_id"]]
