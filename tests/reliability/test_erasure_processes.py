"""After an erasure, no process log and no dead letter holds the customer's name or e-mail.

``fintegrate serve``, ``relay`` and ``consume`` (the default handler, which logs every event)
run as processes at their default log levels. The customer is created, delivered, has a
dead letter in its tenant's DLQ, and is erased; then every process log and the DLQ are read.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from service.config import Settings
from service.kit.db import create_db_engine
from service.messaging import topology
from service.messaging.messages import event_from_row, message_body, message_properties
from service.messaging.publish.publisher import ConfirmingPublisher, OutgoingMessage
from tests.support.api import assert_envelope
from tests.support.names import unique_name
from tests.support.outbox import drain_queue, wait_until
from tests.support.processes import FintegrateProcess, serve_api

pytestmark = pytest.mark.slow


def delivered(client: httpx.Client, headers: dict[str, str], customer_id: str, kind: str) -> bool:
    response = client.get("/events", params={"customer_id": customer_id}, headers=headers)
    events = response.json()["data"]["items"] if response.status_code == 200 else []
    return any(e["event_type"] == kind and e["deliver_status"] == "delivered" for e in events)


def dead_letter_the_creation(settings: Settings, tenant: dict[str, Any], customer_id: str) -> None:
    """The customer's creation event into the tenant's DLQ, as a worker's reject puts it."""
    engine = create_db_engine(settings.database, pool_size=1)
    try:
        with engine.connect() as connection:
            row = connection.execute(
                text(
                    "SELECT e.*, c.name AS consumer_name FROM customer_events e"
                    " JOIN consumers c ON c.consumer_id = e.consumer_id"
                    " WHERE e.customer_id = :id AND e.event_type = 'customer_creation'"
                ),
                {"id": customer_id},
            ).one()
    finally:
        engine.dispose()
    event = event_from_row(row)
    message = OutgoingMessage(
        topology.dlq_routing_key(tenant["name"]), message_body(event), message_properties(event)
    )
    with ConfirmingPublisher(settings.broker.url) as publisher:
        assert publisher.publish(message).ok


def test_no_process_log_and_no_dead_letter_holds_an_erased_customer(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    assert isolated_settings.auth.admin_api_key
    admin = {"X-Admin-Key": isolated_settings.auth.admin_api_key}
    marker = uuid.uuid4().hex[:10]
    name, email = f"Zelda Erasable {marker}", f"zelda.{marker}@example.com"
    api, url = serve_api(isolated_settings, tmp_path, log_level="info")
    processes = [api]
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            created = client.post(
                "/consumer/data", json={"name": unique_name("gone")}, headers=admin
            )
            tenant = assert_envelope(created, 201)
            headers = {"X-API-Key": tenant["api_key"]}
            worker_settings = isolated_settings.updated(
                {"api_url": url, "api_key": tenant["api_key"]}
            )
            processes += [
                FintegrateProcess("relay", ["relay"], isolated_settings, tmp_path).start(),
                FintegrateProcess(
                    "worker", ["consume", "--consumer", tenant["name"]], worker_settings, tmp_path
                ).start(),
            ]
            customer = assert_envelope(
                client.post("/customer/data", json={"name": name, "email": email}, headers=headers),
                201,
            )
            customer_id = customer["customer_id"]
            assert wait_until(
                lambda: delivered(client, headers, customer_id, "customer_creation"), timeout=90
            )
            dead_letter_the_creation(isolated_settings, tenant, customer_id)

            erased = client.post(f"/customer/data/{customer_id}/erase", headers=headers)

            assert assert_envelope(erased, 200)["dead_letters_redacted"] == 1
            assert wait_until(
                lambda: delivered(client, headers, customer_id, "customer_erasure"), timeout=90
            )
    finally:
        for process in processes:
            process.terminate()

    logs = {process.name: process.log_text() for process in processes}
    assert "customer_creation" in logs["worker"], "the default handler logged the event"
    assert {n: log for n, log in logs.items() if email in log or name in log} == {}
    letters = drain_queue(isolated_settings.broker.url, topology.dlq_name(tenant["name"]))
    assert len(letters) == 1
    assert json.loads(letters[0][2])["payload"] == {"erased": True}
    assert not [body for _, _, body in letters if email.encode() in body]
