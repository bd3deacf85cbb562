"""POST /events/confirm-delivery: idempotent receipts and delivery bookkeeping."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from tests.support.outbox import event_rows, insert_events, receipt_count

Consumer = dict[str, Any]


def confirm(client: TestClient, consumer: Consumer, event_id: str, status: str) -> Any:
    return client.post(
        "/events/confirm-delivery",
        json={"event_id": event_id, "status": status, "detail": "handled"},
        headers=consumer["headers"],
    )


def test_first_confirmation_delivers_and_duplicate_changes_nothing(
    client: TestClient, engine: Engine, create_consumer: Callable[..., Consumer]
) -> None:
    tenant = create_consumer()
    [event_id] = insert_events(engine, tenant["consumer_id"])
    first = confirm(client, tenant, event_id, "processed")
    assert first.status_code == 200
    data = first.json()["data"]
    assert data["duplicate"] is False
    assert (data["deliver_status"], data["deliver_try_count"]) == ("delivered", 1)
    before = tuple(event_rows(engine, [event_id])[event_id])
    again = confirm(client, tenant, event_id, "processed")
    assert again.status_code == 200
    assert again.json()["data"]["duplicate"] is True
    assert again.json()["data"]["delivered_at"] == data["delivered_at"]
    assert tuple(event_rows(engine, [event_id])[event_id]) == before
    assert receipt_count(engine, event_id) == 1


def test_failed_receipt_marks_failed_but_never_downgrades_delivered(
    client: TestClient, engine: Engine, create_consumer: Callable[..., Consumer]
) -> None:
    tenant = create_consumer()
    first_id, second_id = insert_events(engine, tenant["consumer_id"], 2)
    failed = confirm(client, tenant, first_id, "failed").json()["data"]
    assert (failed["deliver_status"], failed["delivered_at"]) == ("failed", None)
    recovered = confirm(client, tenant, first_id, "processed").json()["data"]
    assert (recovered["deliver_status"], recovered["deliver_try_count"]) == ("delivered", 2)
    confirm(client, tenant, second_id, "received")
    late_failure = confirm(client, tenant, second_id, "failed").json()["data"]
    assert late_failure["deliver_status"] == "delivered"
    assert late_failure["delivered_at"] is not None


def test_foreign_and_unknown_events_answer_the_same_404(
    client: TestClient, engine: Engine, create_consumer: Callable[..., Consumer]
) -> None:
    owner, stranger = create_consumer(), create_consumer()
    [event_id] = insert_events(engine, owner["consumer_id"])
    foreign = confirm(client, stranger, event_id, "processed")
    unknown = confirm(client, stranger, str(uuid.uuid4()), "processed")
    assert foreign.status_code == unknown.status_code == 404
    assert foreign.json() == unknown.json()
    assert receipt_count(engine, event_id) == 0
    assert event_rows(engine, [event_id])[event_id].deliver_status == "pending"


def test_bad_input_is_refused(
    client: TestClient, engine: Engine, create_consumer: Callable[..., Consumer]
) -> None:
    tenant = create_consumer()
    [event_id] = insert_events(engine, tenant["consumer_id"])
    bad_status = confirm(client, tenant, event_id, "done")
    bad_id = confirm(client, tenant, "not-a-uuid", "processed")
    extra = client.post(
        "/events/confirm-delivery",
        json={"event_id": event_id, "status": "processed", "surprise": 1},
        headers=tenant["headers"],
    )
    assert bad_status.status_code == bad_id.status_code == extra.status_code == 422
    assert receipt_count(engine, event_id) == 0
