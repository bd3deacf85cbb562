"""POST /customer/data/{id}/erase: personal data redacted in one transaction, audited, one
customer_erasure event; other customers and tenants untouched; foreign ids look missing."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pika
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from service.app import create_app
from service.config import Settings
from service.events import partitions
from service.events.erasure_fence import ErasureFence
from service.messaging import topology
from service.messaging.messages import event_from_row, message_body, message_properties
from service.messaging.publish.publisher import ConfirmingPublisher, OutgoingMessage
from tests.support.api import Consumer, assert_envelope
from tests.support.outbox import drain_queue

ERASED = {"erased": True}


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


# -- what erasure reaches beyond the rows (issue 24) -----------------------------------------


def event_rows(engine: Engine, customer_id: str) -> list[Any]:
    """The customer's events as the relay reads them (with the consumer's name)."""
    sql = (
        "SELECT e.*, c.name AS consumer_name FROM customer_events e"
        " JOIN consumers c ON c.consumer_id = e.consumer_id"
        " WHERE e.customer_id = :id ORDER BY e.sequence"
    )
    return rows(engine, sql, customer_id)


def dead_letter(settings: Settings, tenant: Consumer, body: bytes, properties: Any) -> None:
    """A message straight into the tenant's DLQ, as the worker's reject would put it."""
    message = OutgoingMessage(topology.dlq_routing_key(tenant["name"]), body, properties)
    with ConfirmingPublisher(settings.broker.url) as publisher:
        assert publisher.publish(message).ok


def dead_letter_event(settings: Settings, tenant: Consumer, row: Any) -> None:
    event = event_from_row(row)
    dead_letter(settings, tenant, message_body(event), message_properties(event))


def test_erasure_redacts_the_customers_dead_letters_and_nothing_else(
    client: TestClient,
    tenant: Consumer,
    create_customer: Callable,
    engine: Engine,
    settings: Settings,
) -> None:
    customer = create_customer(tenant, name="Ada Lovelace", email="ada.dlq@example.com")
    bystander = create_customer(tenant, name="Grace Hopper", email="grace.dlq@example.com")
    for someone in (customer, bystander):
        dead_letter_event(settings, tenant, event_rows(engine, someone["customer_id"])[0])
    dead_letter(settings, tenant, b"not json ada.dlq", pika.BasicProperties(message_id="x"))
    dlq = topology.dlq_name(tenant["name"])

    path = f"/customer/data/{customer['customer_id']}/erase"
    erased = assert_envelope(client.post(path, headers=tenant["headers"]), 200)
    again = assert_envelope(client.post(path, headers=tenant["headers"]), 200)

    assert erased["dead_letters_redacted"] == 1
    assert again["dead_letters_redacted"] == 0, "a redacted copy is not redacted again"
    letters = drain_queue(settings.broker.url, dlq)
    bodies = [body for _, _, body in letters]
    assert len(letters) == 3, "nothing lost, nothing added"
    assert not [body for body in bodies if b"ada.dlq@example.com" in body or b"Ada" in body]
    documents = {
        document["customer_id"]: (document, properties)
        for _, properties, body in letters
        if body.startswith(b"{")
        for document in [json.loads(body)]
    }
    redacted, properties = documents[customer["customer_id"]]
    assert redacted["payload"] == ERASED
    assert redacted["event_type"] == "customer_creation" and redacted["sequence"] == 1
    assert properties.headers["x-fintegrate-erased"] is True
    assert documents[bystander["customer_id"]][0]["payload"]["email"] == "grace.dlq@example.com"
    assert b"not json ada.dlq" in bodies, "a body that is no event is left alone"


def test_erasure_answers_503_and_erases_nothing_while_the_broker_is_away(
    settings: Settings, create_consumer: Callable[..., Consumer], create_customer: Callable
) -> None:
    tenant = create_consumer()
    customer = create_customer(tenant, email="away@example.com")
    broken = settings.updated({"rabbitmq_url": "amqp://u:p@127.0.0.1:1/fintegrate"})
    with TestClient(create_app(broken)) as away:
        path = f"/customer/data/{customer['customer_id']}"
        refused = away.post(f"{path}/erase", headers=tenant["headers"])
        shown = assert_envelope(away.get(path, headers=tenant["headers"]), 200)
    assert_envelope(refused, 503)
    assert "nothing was erased" in refused.json()["detail"]["status_description"]
    assert shown["email"] == "away@example.com"


@pytest.mark.parametrize("on_idle_connection", [False, True], ids=["own", "round's"])
def test_erasure_waits_for_a_publish_in_flight(
    client: TestClient,
    tenant: Consumer,
    create_customer: Callable,
    engine: Engine,
    on_idle_connection: bool,
) -> None:
    customer = create_customer(tenant, email="inflight@example.com")
    [row] = event_rows(engine, customer["customer_id"])
    path = f"/customer/data/{customer['customer_id']}/erase"
    with engine.connect() as idle:
        fence = ErasureFence.on(idle) if on_idle_connection else ErasureFence(engine)
        with fence, ThreadPoolExecutor(max_workers=1) as pool:
            [sent] = fence.hold([row])  # a relay's wave, read and locked, not yet confirmed
            erasing = pool.submit(client.post, path, headers=tenant["headers"])
            time.sleep(0.5)
            assert not erasing.done(), "the erasure waits for the wave's confirm"
            fence.release()
            assert_envelope(erasing.result(timeout=30), 200)
        assert not idle.in_transaction(), "the round's connection is idle again"
    assert sent.payload_json["email"] == "inflight@example.com"  # sent before the erasure


def test_a_wave_read_before_the_erasure_goes_out_redacted(
    client: TestClient, tenant: Consumer, create_customer: Callable, engine: Engine
) -> None:
    customer = create_customer(tenant, email="stale@example.com")
    [stale] = event_rows(engine, customer["customer_id"])  # the relay read it ...
    path = f"/customer/data/{customer['customer_id']}/erase"
    assert_envelope(client.post(path, headers=tenant["headers"]), 200)  # ... then this
    with ErasureFence(engine) as fence:
        [sent] = fence.hold([stale])
    assert stale.payload_json["email"] == "stale@example.com"
    assert sent.payload_json == ERASED
    assert event_from_row(sent).payload == ERASED


def test_the_first_wave_fenced_in_the_round_s_read_transaction_sees_a_later_erasure(
    client: TestClient, tenant: Consumer, create_customer: Callable, engine: Engine
) -> None:
    """The relay hands its read's open transaction to the fence: the wave's payloads are
    re-read there after the locks, so an erasure that committed after the read is seen."""
    customer = create_customer(tenant, email="read@example.com")
    path = f"/customer/data/{customer['customer_id']}/erase"
    with engine.connect() as round_connection:
        read = round_connection.begin()
        [stale] = round_connection.execute(
            text("SELECT * FROM customer_events WHERE customer_id = :id"),
            {"id": customer["customer_id"]},
        ).all()
        assert_envelope(client.post(path, headers=tenant["headers"]), 200)  # after the read
        with ErasureFence.on(round_connection, opened=read) as fence:
            [sent] = fence.around()([stale])
            assert read.is_active, "the first wave is held in the read's transaction"
        assert not round_connection.in_transaction(), "released with the fence"
    assert stale.payload_json["email"] == "read@example.com"
    assert sent.payload_json == ERASED


def test_an_erasure_waits_for_the_first_wave_held_in_the_read_transaction(
    client: TestClient, tenant: Consumer, create_customer: Callable, engine: Engine
) -> None:
    customer = create_customer(tenant, email="first@example.com")
    [row] = event_rows(engine, customer["customer_id"])
    path = f"/customer/data/{customer['customer_id']}/erase"
    with engine.connect() as round_connection:
        fence = ErasureFence.on(round_connection, opened=round_connection.begin())
        with fence, ThreadPoolExecutor(max_workers=1) as pool:
            [sent] = fence.around()([row])
            erasing = pool.submit(client.post, path, headers=tenant["headers"])
            time.sleep(0.5)
            assert not erasing.done(), "the erasure waits for the wave's confirm"
            [second] = fence.around()([row])  # the next wave: the first one's locks go
            assert_envelope(erasing.result(timeout=30), 200)
        assert not round_connection.in_transaction()
    assert sent.payload_json["email"] == "first@example.com"
    assert second.payload_json == ERASED  # the queued erasure went in between the waves


def test_erasure_answers_503_while_a_busy_publish_holds_the_customer(
    client: TestClient, tenant: Consumer, create_customer: Callable, engine: Engine
) -> None:
    customer = create_customer(tenant)
    [row] = event_rows(engine, customer["customer_id"])
    with ErasureFence(engine) as fence:
        fence.hold([row])
        busy = client.post(
            f"/customer/data/{customer['customer_id']}/erase", headers=tenant["headers"]
        )
    assert_envelope(busy, 503)
    assert "was not erased" in busy.json()["detail"]["status_description"]
    assert all(e.payload_json != ERASED for e in events_of(engine, customer["customer_id"]))


def test_erasure_answers_503_while_a_partition_is_frozen(
    client: TestClient, tenant: Consumer, create_customer: Callable, engine: Engine
) -> None:
    customer = create_customer(tenant, email="frozen@example.com")
    [name] = {r.partition for r in rows(engine, PARTITION_OF, customer["customer_id"])}
    with engine.begin() as connection:
        partitions.freeze(connection, name)
    try:
        frozen = client.post(
            f"/customer/data/{customer['customer_id']}/erase", headers=tenant["headers"]
        )
    finally:
        with engine.begin() as connection:
            partitions.unfreeze(connection, name)
    assert_envelope(frozen, 503)
    assert "frozen for archiving" in frozen.json()["detail"]["status_description"]
    retried = client.post(
        f"/customer/data/{customer['customer_id']}/erase", headers=tenant["headers"]
    )
    assert assert_envelope(retried, 200)["already_erased"] is False


PARTITION_OF = (
    "SELECT tableoid::regclass::text AS partition FROM customer_events WHERE customer_id = :id"
)


def test_the_fence_on_a_requests_transaction_holds_until_it_ends(
    client: TestClient, tenant: Consumer, create_customer: Callable, engine: Engine
) -> None:
    """The API's resend and redeliver fence their publish on the request's transaction."""
    customer = create_customer(tenant, email="republish@example.com")
    [stale] = event_rows(engine, customer["customer_id"])
    path = f"/customer/data/{customer['customer_id']}/erase"
    with engine.connect() as connection, connection.begin():
        fence = ErasureFence.within(connection)
        [sent] = fence.around()([stale])
        fence.release()  # the request's transaction still holds the lock
        busy = client.post(path, headers=tenant["headers"])
    assert_envelope(busy, 503)
    assert sent.payload_json["email"] == "republish@example.com"
    assert_envelope(client.post(path, headers=tenant["headers"]), 200)
    with engine.connect() as connection, connection.begin():
        [after] = ErasureFence.within(connection).hold([stale])
    assert after.payload_json == ERASED
