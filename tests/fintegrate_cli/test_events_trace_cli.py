"""`fintegrate events trace`: a delivered, a held-back and a failed event, from the records."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import httpx
from sqlalchemy import Engine, text

from service.config import Settings
from service.messaging.publish.relay import OutboxRelay
from tests.support.cli import RunCli, json_of, one_error_line
from tests.support.names import unique_name
from tests.support.outbox import insert_consumer

# Two events of one customer (one aggregate): sequences 1 and 2.
INSERT_RUN = text(
    """
    INSERT INTO customer_events
        (customer_id, consumer_id, event_type, source_service, payload_json, metadata_json)
    SELECT :customer_id, :consumer_id, 'customer_creation', 'POST /customer/data',
           '{}'::jsonb, jsonb_build_object('request_id', 'req-' || n)
    FROM generate_series(1, :count) AS n
    ORDER BY n
    RETURNING event_id
    """
)


def insert_run(engine: Engine, consumer_id: str, count: int) -> list[str]:
    params = {"customer_id": uuid.uuid4(), "consumer_id": consumer_id, "count": count}
    with engine.begin() as connection:
        return [str(row.event_id) for row in connection.execute(INSERT_RUN, params)]


def relay_round(settings: Settings, engine: Engine) -> OutboxRelay:
    """Publish what is due now (one relay, leaving its partitions after)."""
    relay = OutboxRelay.from_settings(settings, engine, threading.Event())
    try:
        relay.drain()
    finally:
        relay.close()
    return relay


def confirm(api_url: str, tenant: dict[str, Any], event_id: str, status: str, detail: str) -> None:
    response = httpx.post(
        f"{api_url}/events/confirm-delivery",
        json={"event_id": event_id, "status": status, "detail": detail},
        headers={"X-API-Key": tenant["api_key"]},
        timeout=10,
    )
    assert response.status_code == 200, response.text


def steps_of(timeline: dict[str, Any]) -> list[str]:
    return [step["step"] for step in timeline["steps"]]


def test_a_delivered_event_shows_its_request_publish_and_receipt(
    run_cli: RunCli, api_env: Settings, engine: Engine, tenant: dict[str, Any], live_server: str
) -> None:
    [event_id] = insert_run(engine, tenant["consumer_id"], 1)
    relay_round(api_env, engine)
    confirm(live_server, tenant, event_id, "processed", "handled by test")
    timeline = json_of(run_cli("events", "trace", event_id, "--json"))
    assert timeline["state"] == "delivered"
    assert steps_of(timeline) == ["created", "published", "receipt processed"]
    created, published, receipt = timeline["steps"]
    assert created["detail"] == "by POST /customer/data, request req-1"
    assert "after 1 attempt(s)" in published["detail"]
    assert receipt["detail"] == "handled by test"
    assert published["since_previous_seconds"] >= 0 and receipt["since_previous_seconds"] >= 0
    assert timeline["neighbours"] == []


def test_a_held_back_event_names_the_failing_event_before_it_and_the_relay(
    run_cli: RunCli, service_env: Settings, engine: Engine
) -> None:
    consumer_id = insert_consumer(engine, unique_name("noqueue"))  # no queue: unroutable
    first, second = insert_run(engine, consumer_id, 2)
    relay = relay_round(service_env, engine)
    held = json_of(run_cli("events", "trace", second, "--json"))
    assert held["state"] == "waiting to be published"
    assert steps_of(held) == ["created", "held back"]
    assert f"behind event {first} (sequence 1, still pending: " in held["steps"][-1]["detail"]
    roles = {row["role"]: row for row in held["neighbours"]}
    assert roles["first pending before it"]["event_id"] == first
    assert roles["neighbour"]["sequence"] == 1
    failing = json_of(run_cli("events", "trace", first, "--json"))
    assert steps_of(failing) == ["created", "publish failed", "waiting"]
    failure = failing["steps"][1]["detail"]
    assert failure.startswith(f"relay {relay.leases.relay_id}") and "1 attempt(s)" in failure
    assert failing["neighbours"][0] == {**failing["neighbours"][0], "event_id": second}
    table = run_cli("events", "trace", second)
    assert table.exit_code == 0 and "held back" in table.stdout and first[:8] in table.stdout


def test_a_failed_event_shows_the_handler_failure(
    run_cli: RunCli, api_env: Settings, engine: Engine, tenant: dict[str, Any], live_server: str
) -> None:
    [event_id] = insert_run(engine, tenant["consumer_id"], 1)
    relay_round(api_env, engine)
    confirm(live_server, tenant, event_id, "failed", "handler raised ValueError: boom")
    timeline = json_of(run_cli("events", "trace", event_id, "--json"))
    assert timeline["state"] == "failed in the tenant's handler (dead-lettered)"
    assert steps_of(timeline) == ["created", "published", "receipt failed", "dead-lettered"]
    assert timeline["steps"][2]["detail"] == "handler raised ValueError: boom"


def test_an_unknown_or_malformed_event_id_is_one_clear_error(
    run_cli: RunCli, service_env: Settings
) -> None:
    missing = run_cli("events", "trace", str(uuid.uuid4()))
    assert missing.exit_code == 1 and "no event" in one_error_line(missing)
    malformed = run_cli("events", "trace", "not-a-uuid")
    assert malformed.exit_code == 2 and "not an event id" in one_error_line(malformed)
