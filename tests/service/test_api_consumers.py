"""Consumers: admin creation with its key, event and queues; updates; key listing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from service.app import create_app
from service.config import Settings
from tests.support.api import assert_envelope, count_rows
from tests.support.names import unique_name


def consumer_rows(engine: Engine, name: str) -> int:
    with engine.connect() as connection:
        count: int = connection.execute(
            text("SELECT count(*) FROM consumers WHERE name = :name"), {"name": name}
        ).scalar_one()
    return count


def test_creation_returns_the_key_once_and_records_event_and_hash(
    client: TestClient, admin_headers: dict[str, str], engine: Engine
) -> None:
    name = unique_name("acme")
    response = client.post(
        "/consumer/data", json={"name": name, "description": "Acme"}, headers=admin_headers
    )
    data = assert_envelope(response, 201)
    assert data["name"] == name and data["status"] == "active"
    assert data["api_key"].startswith(f"fk_{data['key_prefix']}_")
    assert data["queue_name"] == f"customer_notification_{name}"
    assert data["dlq_name"] == f"customer_notification_{name}_DLQ"
    assert data["queue_provisioned"] is True
    with engine.connect() as connection:
        key_hash = connection.execute(
            text("SELECT key_hash FROM consumer_api_keys WHERE key_id = :id"),
            {"id": data["key_id"]},
        ).scalar_one()
        event = connection.execute(
            text(
                "SELECT event_type, publish_status, payload_json FROM customer_events"
                " WHERE consumer_id = :id"
            ),
            {"id": data["consumer_id"]},
        ).one()
    assert key_hash.startswith("$2") and data["api_key"] not in key_hash
    assert event.event_type == "consumer_created" and event.publish_status == "pending"
    assert event.payload_json == {"consumer_id": data["consumer_id"], "name": name}
    shown = client.get(f"/consumer/data/{data['consumer_id']}", headers=admin_headers)
    assert "api_key" not in assert_envelope(shown, 200)


@pytest.mark.parametrize("name", ["Upper", "with-dash", "spa ce", "", "x" * 65])
def test_invalid_names_are_422_and_write_nothing(
    client: TestClient, admin_headers: dict[str, str], engine: Engine, name: str
) -> None:
    response = client.post("/consumer/data", json={"name": name}, headers=admin_headers)
    assert_envelope(response, 422)
    assert consumer_rows(engine, name) == 0


def test_creation_answers_201_when_the_broker_is_down(
    settings: Settings, admin_headers: dict[str, str], engine: Engine
) -> None:
    no_broker = settings.updated(
        {"rabbitmq_url": "amqp://fintegrate_user:fintegrate_pass@127.0.0.1:1/none"}
    )
    name = unique_name("nobroker")
    with TestClient(create_app(no_broker)) as client:
        response = client.post("/consumer/data", json={"name": name}, headers=admin_headers)
    assert assert_envelope(response, 201)["queue_provisioned"] is False
    assert consumer_rows(engine, name) == 1


def test_admin_lists_every_consumer_page_by_page(
    client: TestClient, admin_headers: dict[str, str], create_consumer: Callable
) -> None:
    made = {create_consumer()["consumer_id"] for _ in range(3)}
    seen: set[str] = set()
    cursor: str | None = None
    for _ in range(100):
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = assert_envelope(
            client.get("/consumer/data", params=params, headers=admin_headers), 200
        )
        seen |= {item["consumer_id"] for item in page["items"]}
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert made <= seen


def test_patch_changes_limits_and_description(
    client: TestClient, admin_headers: dict[str, str], create_consumer: Callable
) -> None:
    consumer = create_consumer()
    path = f"/consumer/data/{consumer['consumer_id']}"
    body = {"rate_limit_per_minute": 10, "rate_limit_burst": 20, "description": "new"}
    updated = assert_envelope(client.patch(path, json=body, headers=admin_headers), 200)
    assert (updated["rate_limit_per_minute"], updated["rate_limit_burst"]) == (10, 20)
    assert updated["description"] == "new" and updated["status"] == "active"
    cleared = client.patch(path, json={"rate_limit_burst": None}, headers=admin_headers)
    assert assert_envelope(cleared, 200)["rate_limit_burst"] is None


@pytest.mark.parametrize(
    "body", [{}, {"status": "paused"}, {"status": None}, {"rate_limit_burst": 0}, {"x": 1}]
)
def test_patch_refuses_bad_bodies(
    client: TestClient, admin_headers: dict[str, str], create_consumer: Callable, body: Any
) -> None:
    consumer = create_consumer()
    path = f"/consumer/data/{consumer['consumer_id']}"
    assert_envelope(client.patch(path, json=body, headers=admin_headers), 422)


def test_unknown_consumer_is_404(client: TestClient, admin_headers: dict[str, str]) -> None:
    missing = "/consumer/data/00000000-0000-4000-8000-000000000000"
    assert_envelope(client.get(missing, headers=admin_headers), 404)
    patch = client.patch(missing, json={"status": "disabled"}, headers=admin_headers)
    assert_envelope(patch, 404)
    assert_envelope(client.get(f"{missing}/keys", headers=admin_headers), 404)
    assert_envelope(client.post(f"{missing}/keys/rotate", headers=admin_headers), 404)


def test_rotation_keeps_one_active_key(
    client: TestClient, admin_headers: dict[str, str], create_consumer: Callable, engine: Engine
) -> None:
    consumer = create_consumer()
    path = f"/consumer/data/{consumer['consumer_id']}/keys"
    for _ in range(2):
        assert_envelope(client.post(f"{path}/rotate", headers=admin_headers), 201)
    keys = assert_envelope(client.get(path, headers=admin_headers), 200)["items"]
    assert len(keys) == 3
    assert [key["is_active"] for key in keys] == [False, False, True]
    assert count_rows(engine, "consumer_api_keys", consumer["consumer_id"]) == 3
