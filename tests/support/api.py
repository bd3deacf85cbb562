"""Assertions and look-ups shared by the API tests."""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any
from uuid import UUID

import httpx
from sqlalchemy import Engine, text

from tests.support.names import unique_name

# A consumer's data as the admin API answered, with its ``headers``.
Consumer = dict[str, Any]

# (method, path template, body) for every tenant endpoint taking an id.
TENANT_ENDPOINTS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/customer/data/{customer_id}", None),
    ("PATCH", "/customer/data/{customer_id}/status", {"status": "suspended"}),
    ("DELETE", "/customer/data/{customer_id}", None),
    ("POST", "/customer/data/{customer_id}/erase", None),
    ("PUT", "/customer/data/{customer_id}/tags", {"tags": {"stolen": True}}),
    ("GET", "/customer/data/{customer_id}/tags", None),
    ("DELETE", "/customer/data/{customer_id}/tags/tier", None),
    ("POST", "/customer/data/{customer_id}/analytics", {"metrics": {"x": 1}}),
    ("GET", "/customer/data/{customer_id}/analytics", None),
    ("GET", "/events/{event_id}", None),
    ("POST", "/consumer/data/{consumer_id}/keys/rotate", None),
]

TENANT_TABLES = (
    "customers",
    "customer_events",
    "customer_tags",
    "customer_analytics",
    "idempotency_keys",
)


def assert_envelope(response: httpx.Response, status_code: int) -> Any:
    """The answer has ``status_code`` and the SPEC 4.1 envelope; returns ``data``."""
    assert response.status_code == status_code, response.text
    body = response.json()
    assert set(body) == {"data", "detail"}, body
    detail = body["detail"]
    assert detail["status_code"] == str(status_code)
    assert detail["status_name"] == HTTPStatus(status_code).phrase
    if status_code < 400:
        assert detail["status_description"] == "Success"
    else:
        assert body["data"] == {}
        assert detail["status_description"] and detail["status_description"] != "Success"
    return body["data"]


def post_data(
    client: httpx.Client, path: str, headers: dict[str, str], **body: Any
) -> dict[str, Any]:
    """POST ``body`` to ``path``; asserts a 200 and returns its data."""
    response = client.post(path, json=body, headers=headers)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def description(response: httpx.Response) -> str:
    """The envelope's status description."""
    text_value: str = response.json()["detail"]["status_description"]
    return text_value


def count_rows(engine: Engine, table: str, consumer_id: str | UUID) -> int:
    """Rows of ``table`` belonging to ``consumer_id``."""
    assert table in (*TENANT_TABLES, "consumer_api_keys", "audit_log")
    with engine.connect() as connection:
        count: int = connection.execute(
            text(f"SELECT count(*) FROM {table} WHERE consumer_id = :consumer_id"),
            {"consumer_id": str(consumer_id)},
        ).scalar_one()
    return count


def tenant_row_counts(engine: Engine, consumer_id: str | UUID) -> dict[str, int]:
    """How many rows the tenant has in each tenant-owned table."""
    return {table: count_rows(engine, table, consumer_id) for table in TENANT_TABLES}


def events_of(engine: Engine, customer_id: str | UUID) -> list[Any]:
    """The customer's event rows, oldest first."""
    with engine.connect() as connection:
        return list(
            connection.execute(
                text(
                    "SELECT event_type, payload_json, metadata_json, publish_status,"
                    " source_service FROM customer_events"
                    " WHERE customer_id = :customer_id ORDER BY created_at, event_id"
                ),
                {"customer_id": str(customer_id)},
            )
        )


def customer_events(client: httpx.Client, tenant: Consumer, customer_id: str) -> list[Any]:
    """The customer's events as ``GET /events`` lists them to the tenant."""
    headers = {"X-API-Key": tenant["api_key"]}
    response = client.get("/events", params={"customer_id": customer_id}, headers=headers)
    return list(assert_envelope(response, 200)["items"])


def changed_customer(
    client: httpx.Client, tenant: Consumer, create_customer: Callable[..., Any], changes: int
) -> tuple[str, list[Any]]:
    """A new customer with ``changes`` status changes: its id and events in sequence order."""
    customer_id = create_customer(tenant)["customer_id"]
    for index in range(changes):
        status = "suspended" if index % 2 == 0 else "active"
        path = f"/customer/data/{customer_id}/status"
        client.patch(path, json={"status": status}, headers=tenant["headers"])
    events = sorted(customer_events(client, tenant, customer_id), key=lambda e: e["sequence"])
    return customer_id, events


def confirm_receipt(
    client: httpx.Client, tenant: Consumer, event_id: str, status: str = "processed"
) -> Any:
    """The tenant's worker reports ``status`` for ``event_id`` (POST /events/confirm-delivery);
    returns the receipt it answered."""
    response = client.post(
        "/events/confirm-delivery",
        json={"event_id": event_id, "status": status},
        headers={"X-API-Key": tenant["api_key"]},
    )
    return assert_envelope(response, 200)


def create_tenant_through(
    client: httpx.Client, admin_headers: dict[str, str], prefix: str
) -> dict[str, Any]:
    """A consumer created through ``client`` (a TestClient or an httpx client on a live API);
    its data with the tenant's ``headers``."""
    created = client.post(
        "/consumer/data", json={"name": unique_name(prefix)}, headers=admin_headers
    )
    data: dict[str, Any] = assert_envelope(created, 201)
    return {**data, "headers": {"X-API-Key": data["api_key"]}}


def create_tenant_over_http(api_url: str, admin_key: str | None, prefix: str) -> dict[str, Any]:
    """Create a consumer through a live API with the admin key; returns the 201's data."""
    assert admin_key, "the settings have no admin key"
    response = httpx.post(
        f"{api_url}/consumer/data",
        json={"name": unique_name(prefix)},
        headers={"X-Admin-Key": admin_key},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def create_and_delete_customer(api_url: str, api_key: str) -> str:
    """A customer created and deleted through a live API (two events); its id."""
    headers = {"X-API-Key": api_key}
    created = httpx.post(f"{api_url}/customer/data", json={"name": "Ada"}, headers=headers)
    customer_id: str = assert_envelope(created, 201)["customer_id"]
    assert_envelope(httpx.delete(f"{api_url}/customer/data/{customer_id}", headers=headers), 200)
    return customer_id
