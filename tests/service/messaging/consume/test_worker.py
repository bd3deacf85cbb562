"""The worker as a library: its settings, a handler per event type, run and stop, and a
webhook delivery read as the same event (against the platform's own signing and sender)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import Engine

from service.config import Settings
from service.messaging.consume import (
    EventMessage,
    InvalidMessage,
    InvalidSignature,
    Worker,
    WorkerConfig,
    WorkerUnauthorized,
    verify_webhook,
)
from service.messaging.messages import message_body
from service.messaging.publish.relay import OutboxRelay
from service.webhooks.delivery.sender import delivery_headers
from service.webhooks.signing import TOLERANCE_SECONDS, new_secret, secret_bytes
from tests.support.api import create_and_delete_customer, create_tenant_over_http
from tests.support.outbox import outbound_event, wait_until


def parsed(event_type: str) -> EventMessage:
    return verify_signed(message_body(outbound_event(event_type)))


def verify_signed(body: bytes, secret: str | None = None) -> EventMessage:
    """``body`` signed now as the platform's sender signs it, then verified."""
    secret = secret or new_secret()
    headers = delivery_headers("evt", 1, body, [secret_bytes(secret)], int(time.time()))
    return verify_webhook(body, headers, secret)


def test_the_config_reads_the_same_variables_with_the_same_defaults_as_the_settings() -> None:
    for name, field in WorkerConfig.model_fields.items():
        assert field.alias and field.alias.startswith("FINTEGRATE_"), name
        full = Settings.model_fields[field.alias.removeprefix("FINTEGRATE_").lower()]
        assert field.default == full.default, field.alias
    config = WorkerConfig.from_env(
        {
            "FINTEGRATE_API_URL": "http://api:9000",
            "FINTEGRATE_API_KEY": "fk_a_b",
            "FINTEGRATE_CONSUMER_PREFETCH": "7",
            "FINTEGRATE_WORKER_RECOVERY_INTERVAL_SECONDS": "2.5",
            "FINTEGRATE_DATABASE_URL": "ignored: not the worker's",
        }
    )
    assert (config.api_url, config.api_key, config.prefetch) == ("http://api:9000", "fk_a_b", 7)
    assert config.recovery_interval_seconds == 2.5
    with pytest.raises(ValueError, match="FINTEGRATE_CONSUMER_PREFETCH"):
        WorkerConfig.from_env({"FINTEGRATE_CONSUMER_PREFETCH": "0"})


def test_the_config_from_the_full_settings_carries_each_value(settings: Settings) -> None:
    tuned = settings.model_copy(
        update={"api_key": "fk_x_y", "consumer_prefetch": 3, "worker_max_in_hand_per_customer": 9}
    )
    config = WorkerConfig.from_settings(tuned)
    assert (config.rabbitmq_url, config.api_key) == (settings.rabbitmq_url, "fk_x_y")
    assert (config.prefetch, config.max_in_hand_per_customer) == (3, 9)
    assert config.message_ttl_ms == settings.queue_message_ttl_ms


def test_each_event_type_goes_to_its_handler_and_the_rest_to_the_default() -> None:
    seen: list[tuple[str, str]] = []
    worker = Worker(
        "acme", WorkerConfig(), default=lambda m: seen.append(("default", m.event_type))
    )

    @worker.on("customer_creation")
    def created(message: EventMessage) -> None:
        seen.append(("created", message.event_type))

    @worker.on("customer_deletion", "customer_erasure")
    def gone(message: EventMessage) -> None:
        seen.append(("gone", message.event_type))

    for event_type in ("customer_creation", "customer_erasure", "consumer_created"):
        worker.dispatch(parsed(event_type))
    assert seen == [
        ("created", "customer_creation"),
        ("gone", "customer_erasure"),
        ("default", "consumer_created"),
    ]
    with pytest.raises(ValueError, match="already have a handler"):
        worker.on("customer_deletion")(created)
    with pytest.raises(ValueError, match="unknown event type"):
        worker.on("customer.creation")
    with pytest.raises(ValueError, match="unknown event type"):
        worker.on()


def test_a_webhook_delivery_verifies_into_the_event_its_body_carries() -> None:
    event = outbound_event()
    body, secret = message_body(event), new_secret()
    headers = delivery_headers(event.event_id, 1, body, [secret_bytes(secret)], int(time.time()))
    message = verify_webhook(body, {k.title(): v for k, v in headers.items()}, secret)
    assert (message.event_id, message.customer_id) == (event.event_id, event.customer_id)
    assert message.payload == {"name": "Ada"} and message.sequence == 1


def test_a_rotation_signs_twice_and_either_secret_verifies() -> None:
    body, old, new = message_body(outbound_event()), new_secret(), new_secret()
    headers = delivery_headers("evt", 1, body, [secret_bytes(new), secret_bytes(old)], 1000)
    for secret in (old, new):
        assert verify_webhook(body, headers, secret, now=1000).event_type == "customer_creation"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"body": b'{"tampered": 1}'}, "no webhook-signature matches"),
        ({"secret": "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB"}, "no webhook-signature matches"),
        ({"now": 1000 + TOLERANCE_SECONDS + 1}, "too far from now"),
        ({"now": 1000 - TOLERANCE_SECONDS - 1}, "too far from now"),
        ({"drop": "webhook-signature"}, "missing header webhook-signature"),
        ({"timestamp": "soon"}, "not unix seconds"),
    ],
)
def test_a_forged_replayed_or_incomplete_delivery_is_refused(
    change: dict[str, Any], reason: str
) -> None:
    body, secret = message_body(outbound_event()), new_secret()
    headers = delivery_headers("evt", 1, body, [secret_bytes(secret)], 1000)
    headers.pop(change.get("drop", ""), None)
    if "timestamp" in change:
        headers["webhook-timestamp"] = change["timestamp"]
    with pytest.raises(InvalidSignature, match=reason):
        verify_webhook(
            change.get("body", body), headers, change.get("secret", secret), change.get("now", 1000)
        )


def test_a_signed_body_that_is_no_event_is_refused_as_such() -> None:
    with pytest.raises(InvalidMessage):
        verify_signed(b'{"hello": "world"}')


def test_run_finds_the_tenant_by_its_key_and_calls_each_types_handler(
    settings: Settings, engine: Engine, live_server: str
) -> None:
    tenant = create_tenant_over_http(live_server, settings.admin_api_key, "lib")
    customer_id = create_and_delete_customer(live_server, tenant["api_key"])
    OutboxRelay(settings, engine, threading.Event()).drain()

    config = WorkerConfig.from_settings(
        settings.model_copy(update={"api_url": live_server, "api_key": tenant["api_key"]})
    )
    seen: list[tuple[str, str | None]] = []
    worker = Worker(config=config, default=lambda m: seen.append((m.event_type, None)))
    worker.on("customer_creation", "customer_deletion")(
        lambda m: seen.append((m.event_type, m.customer_id))
    )
    stats: list[Any] = []
    thread = threading.Thread(target=lambda: stats.append(worker.run()), daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: len(seen) == 3, timeout=30)
    finally:
        worker.stop()
        thread.join(30)
    assert not thread.is_alive()
    expected = [
        ("consumer_created", None),  # the tenant's own aggregate: no order with the customer's
        ("customer_creation", customer_id),
        ("customer_deletion", customer_id),
    ]
    assert sorted(seen, key=str) == sorted(expected, key=str)
    assert seen.index(("customer_creation", customer_id)) < seen.index(
        ("customer_deletion", customer_id)
    )
    assert stats[0].processed == 3


def test_run_refuses_a_missing_or_unknown_key_before_consuming(live_server: str) -> None:
    with pytest.raises(ValueError, match="FINTEGRATE_API_KEY"):
        Worker(config=WorkerConfig(api_url=live_server)).run()
    unknown = WorkerConfig(api_url=live_server, api_key="fk_" + "a" * 12 + "_" + "b" * 32)
    with pytest.raises(WorkerUnauthorized):
        Worker(config=unknown).run()
