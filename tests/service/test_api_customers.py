"""Customers: each change commits with exactly one matching event; bad input writes nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from tests.support.api import Consumer, assert_envelope, events_of, tenant_row_counts


def test_creation_writes_one_pending_creation_event(
    client: TestClient, tenant: Consumer, engine: Engine
) -> None:
    response = client.post(
        "/customer/data",
        json={"name": "Grace", "email": "grace@example.com", "status": "suspended"},
        headers={**tenant["headers"], "X-Request-ID": "req-create-1"},
    )
    customer = assert_envelope(response, 201)
    [event] = events_of(engine, customer["customer_id"])
    assert event.event_type == "customer_creation"
    assert event.publish_status == "pending"
    assert event.source_service == "POST /customer/data"
    assert event.metadata_json == {"request_id": "req-create-1"}
    assert event.payload_json == {
        "customer_id": customer["customer_id"],
        "name": "Grace",
        "email": "grace@example.com",
        "status": "suspended",
    }


def test_status_change_writes_old_and_new_status(
    client: TestClient, tenant: Consumer, create_customer: Callable, engine: Engine
) -> None:
    customer = create_customer(tenant)
    path = f"/customer/data/{customer['customer_id']}/status"
    changed = client.patch(path, json={"status": "inactive"}, headers=tenant["headers"])
    assert assert_envelope(changed, 200)["status"] == "inactive"
    events = events_of(engine, customer["customer_id"])
    assert [event.event_type for event in events] == ["customer_creation", "customer_status_change"]
    assert events[1].payload_json == {
        "customer_id": customer["customer_id"],
        "old_status": "active",
        "new_status": "inactive",
    }


def test_same_status_is_a_no_op_without_event(
    client: TestClient, tenant: Consumer, create_customer: Callable, engine: Engine
) -> None:
    customer = create_customer(tenant)
    path = f"/customer/data/{customer['customer_id']}/status"
    unchanged = client.patch(path, json={"status": "active"}, headers=tenant["headers"])
    assert assert_envelope(unchanged, 200)["status"] == "active"
    assert len(events_of(engine, customer["customer_id"])) == 1


def test_soft_delete_writes_deletion_event_and_hides_the_customer(
    client: TestClient, tenant: Consumer, create_customer: Callable, engine: Engine
) -> None:
    customer = create_customer(tenant)
    path = f"/customer/data/{customer['customer_id']}"
    deleted = assert_envelope(client.delete(path, headers=tenant["headers"]), 200)
    assert deleted["deleted_at"]
    assert events_of(engine, customer["customer_id"])[-1].event_type == "customer_deletion"
    for response in (
        client.get(path, headers=tenant["headers"]),
        client.delete(path, headers=tenant["headers"]),
        client.get(f"{path}/tags", headers=tenant["headers"]),
        client.patch(f"{path}/status", json={"status": "inactive"}, headers=tenant["headers"]),
    ):
        assert_envelope(response, 404)
    listing = assert_envelope(client.get("/customer/data", headers=tenant["headers"]), 200)
    assert listing["items"] == []
    assert len(events_of(engine, customer["customer_id"])) == 2


def test_listing_pages_with_cursor_and_filters_by_status(
    client: TestClient, tenant: Consumer, create_customer: Callable
) -> None:
    made = [create_customer(tenant, status="active" if n % 2 else "inactive") for n in range(5)]
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = assert_envelope(
            client.get("/customer/data", params=params, headers=tenant["headers"]), 200
        )
        assert page["count"] == len(page["items"]) <= 2
        seen += [item["customer_id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [customer["customer_id"] for customer in made]
    inactive = client.get("/customer/data?status=inactive", headers=tenant["headers"])
    assert {item["status"] for item in assert_envelope(inactive, 200)["items"]} == {"inactive"}
    assert assert_envelope(inactive, 200)["count"] == 3


def test_tags_merge_list_and_delete(
    client: TestClient, tenant: Consumer, create_customer: Callable
) -> None:
    customer = create_customer(tenant)
    path = f"/customer/data/{customer['customer_id']}/tags"
    first = client.put(path, json={"tags": {"tier": "gold", "score": 3}}, headers=tenant["headers"])
    assert assert_envelope(first, 200)["tags"] == {"tier": "gold", "score": 3}
    merged = client.put(
        path, json={"tags": {"tier": "silver", "vip": True}}, headers=tenant["headers"]
    )
    assert assert_envelope(merged, 200)["tags"] == {"tier": "silver", "score": 3, "vip": True}
    listed = assert_envelope(client.get(path, headers=tenant["headers"]), 200)
    assert listed["tags"] == {"tier": "silver", "score": 3, "vip": True}
    remaining = assert_envelope(client.delete(f"{path}/score", headers=tenant["headers"]), 200)
    assert remaining["tags"] == {"tier": "silver", "vip": True}
    assert_envelope(client.delete(f"{path}/score", headers=tenant["headers"]), 404)


def test_tag_count_is_bounded(
    client: TestClient, tenant: Consumer, create_customer: Callable, engine: Engine
) -> None:
    customer = create_customer(tenant)
    path = f"/customer/data/{customer['customer_id']}/tags"
    first = {f"a{n}": n for n in range(30)}
    assert_envelope(client.put(path, json={"tags": first}, headers=tenant["headers"]), 200)
    second = {f"b{n}": n for n in range(30)}
    assert_envelope(client.put(path, json={"tags": second}, headers=tenant["headers"]), 422)
    assert tenant_row_counts(engine, tenant["consumer_id"])["customer_tags"] == 30


def test_analytics_are_listed_by_time_range(
    client: TestClient, tenant: Consumer, create_customer: Callable
) -> None:
    customer = create_customer(tenant)
    path = f"/customer/data/{customer['customer_id']}/analytics"
    for day in ("03", "01", "02"):
        body = {"metrics": {"day": int(day)}, "recorded_at": f"2026-01-{day}T12:00:00Z"}
        assert_envelope(client.post(path, json=body, headers=tenant["headers"]), 201)
    window = {"from": "2026-01-02T00:00:00Z", "to": "2026-01-03T23:59:59Z"}
    page = assert_envelope(client.get(path, params=window, headers=tenant["headers"]), 200)
    assert [item["metrics"]["day"] for item in page["items"]] == [2, 3]
    everything = assert_envelope(client.get(path, headers=tenant["headers"]), 200)
    assert [item["metrics"]["day"] for item in everything["items"]] == [1, 2, 3]


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("post", "", {"name": "x" * 201}),
        ("post", "", {"name": "ok", "email": "e@x.io" + "x" * 320}),
        ("post", "", {"name": "nul\u0000byte"}),
        ("patch", "/{id}/status", {"status": "gone"}),
        ("patch", "/{id}/status", {"status": "inactive", "extra": 1}),
        ("put", "/{id}/tags", {"tags": {"bad key!": 1}}),
        ("put", "/{id}/tags", {"tags": {}}),
        ("put", "/{id}/tags", {"tags": {"k": "v" * 501}}),
        ("post", "/{id}/analytics", {"metrics": {}}),
        ("post", "/{id}/analytics", {"metrics": {"x": "a\u0000b"}}),
        ("post", "/{id}/analytics", {"metrics": {"x": 1}, "recorded_at": "yesterday"}),
    ],
)
def test_bad_input_is_422_and_writes_nothing(
    client: TestClient,
    tenant: Consumer,
    create_customer: Callable,
    engine: Engine,
    method: str,
    suffix: str,
    body: dict[str, Any],
) -> None:
    customer = create_customer(tenant)
    before = tenant_row_counts(engine, tenant["consumer_id"])
    path = "/customer/data" + suffix.replace("{id}", customer["customer_id"])
    response = client.request(method.upper(), path, json=body, headers=tenant["headers"])
    assert_envelope(response, 422)
    assert tenant_row_counts(engine, tenant["consumer_id"]) == before


def test_non_finite_numbers_are_refused(
    client: TestClient, tenant: Consumer, create_customer: Callable
) -> None:
    customer = create_customer(tenant)
    path = f"/customer/data/{customer['customer_id']}/analytics"
    headers = {**tenant["headers"], "Content-Type": "application/json"}
    response = client.post(path, content=b'{"metrics": {"x": NaN}}', headers=headers)
    assert_envelope(response, 422)


@contextmanager
def event_inserts_refused(engine: Engine, consumer_id: str) -> Iterator[None]:
    """A database trigger that refuses every event row of one tenant while active."""
    function = f"refuse_events_{consumer_id.replace('-', '')}"
    with engine.begin() as connection:
        connection.execute(
            text(
                f"CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF NEW.consumer_id = '{consumer_id}' THEN RAISE EXCEPTION 'refused'; END IF; "
                "RETURN NEW; END $$"
            )
        )
        connection.execute(
            text(
                f"CREATE TRIGGER {function} BEFORE INSERT ON customer_events "
                f"FOR EACH ROW EXECUTE FUNCTION {function}()"
            )
        )
    try:
        yield
    finally:
        with engine.begin() as connection:
            connection.execute(text(f"DROP TRIGGER {function} ON customer_events"))
            connection.execute(text(f"DROP FUNCTION {function}()"))


def test_a_failed_event_insert_leaves_no_customer(
    app: Any, tenant: Consumer, engine: Engine
) -> None:
    """No change without its event: when the event row fails, the customer is not created."""
    before = tenant_row_counts(engine, tenant["consumer_id"])
    with (
        event_inserts_refused(engine, tenant["consumer_id"]),
        TestClient(app, raise_server_exceptions=False) as client,
    ):
        response = client.post("/customer/data", json={"name": "Lost"}, headers=tenant["headers"])
    assert_envelope(response, 500)
    assert tenant_row_counts(engine, tenant["consumer_id"]) == before
    assert before["customers"] == 0


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [("patch", "/status", {"status": "suspended"}), ("delete", "", None)],
)
def test_a_failed_event_insert_leaves_the_customer_unchanged(
    app: Any,
    tenant: Consumer,
    engine: Engine,
    create_customer: Callable,
    method: str,
    suffix: str,
    body: dict[str, str] | None,
) -> None:
    customer = create_customer(tenant)
    before = tenant_row_counts(engine, tenant["consumer_id"])
    path = f"/customer/data/{customer['customer_id']}{suffix}"
    with (
        event_inserts_refused(engine, tenant["consumer_id"]),
        TestClient(app, raise_server_exceptions=False) as client,
    ):
        response = client.request(method.upper(), path, json=body, headers=tenant["headers"])
        assert_envelope(response, 500)
        shown = client.get(f"/customer/data/{customer['customer_id']}", headers=tenant["headers"])
    assert shown.json()["data"]["status"] == customer["status"]
    assert tenant_row_counts(engine, tenant["consumer_id"]) == before
