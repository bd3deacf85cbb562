"""SPEC 9 metric families: what each one counts, read back from the Prometheus exposition."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pika
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, text

from service.config import Settings
from service.messaging import topology
from service.messaging.metrics import DlqCollector, RelayCollector
from service.messaging.publish.relay import OutboxRelay
from tests.support.outbox import amqp_channel, insert_events

Consumer = dict[str, Any]
DAY = 86_400.0


def samples(exposition: str | bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value of a Prometheus text exposition."""
    body = exposition.decode() if isinstance(exposition, bytes) else exposition
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def scraped(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    return samples(response.text)


def delivered_count(client: TestClient) -> float:
    return scraped(client)[("fintegrate_event_delivery_seconds_count", ())]


def confirm(client: TestClient, tenant: Consumer, event_id: str, status: str) -> None:
    response = client.post(
        "/events/confirm-delivery",
        json={"event_id": event_id, "status": status, "detail": None},
        headers=tenant["headers"],
    )
    assert response.status_code == 200, response.text


def confirm_many(client: TestClient, tenant: Consumer, receipts: list[tuple[str, str]]) -> None:
    body = {"receipts": [{"event_id": event_id, "status": status} for event_id, status in receipts]}
    response = client.post("/events/confirm-deliveries", json=body, headers=tenant["headers"])
    assert response.status_code == 200, response.text


def test_delivery_histogram_observes_each_event_once_at_its_first_delivered_receipt(
    client: TestClient, engine: Engine, create_consumer: Callable[..., Consumer]
) -> None:
    tenant = create_consumer()
    delivered, failed = insert_events(engine, tenant["consumer_id"], 2)
    before = delivered_count(client)
    confirm(client, tenant, delivered, "received")
    assert delivered_count(client) == before + 1
    confirm(client, tenant, delivered, "processed")  # a second status: already delivered
    confirm(client, tenant, delivered, "received")  # a duplicate
    confirm(client, tenant, failed, "failed")  # never delivered
    assert delivered_count(client) == before + 1
    buckets = scraped(client)
    assert buckets[("fintegrate_event_delivery_seconds_bucket", (("le", "+Inf"),))] >= 1


def test_delivery_histogram_observes_a_batched_first_delivery_once(
    client: TestClient, engine: Engine, create_consumer: Callable[..., Consumer]
) -> None:
    tenant = create_consumer()
    twice, once, failed = insert_events(engine, tenant["consumer_id"], 3)
    before = delivered_count(client)
    confirm_many(
        client,
        tenant,
        [(twice, "received"), (twice, "processed"), (once, "processed"), (failed, "failed")],
    )
    assert delivered_count(client) == before + 2
    confirm_many(client, tenant, [(twice, "received"), (once, "received")])  # nothing new
    assert delivered_count(client) == before + 2


def test_outbox_gauges_count_pending_events_and_the_oldest_age(
    client: TestClient, engine: Engine, create_consumer: Callable[..., Consumer]
) -> None:
    tenant = create_consumer()
    insert_events(engine, tenant["consumer_id"], 3, age_days=1)
    with engine.connect() as connection:  # other tests of this database left events too
        pending, oldest = connection.execute(
            text(
                "SELECT count(*), extract(epoch FROM now() - min(created_at))"
                " FROM customer_events WHERE publish_status = 'pending'"
            )
        ).one()
    values = scraped(client)
    assert values[("fintegrate_outbox_pending_events", ())] == pending
    assert oldest >= DAY - 60, "the day-old events are pending"
    assert abs(values[("fintegrate_outbox_oldest_pending_seconds", ())] - float(oldest)) < 60


def test_webhook_and_fail_open_counters_are_served_from_zero(client: TestClient) -> None:
    values = scraped(client)
    for result in ("succeeded", "retrying", "failed"):
        assert ("fintegrate_webhook_attempts_total", (("result", result),)) in values
    assert ("fintegrate_ratelimit_fail_open_total", (("check", "rate_limit"),)) in values


def test_relay_collector_counts_what_the_relay_recorded_and_the_partitions_it_holds(
    settings: Settings, engine: Engine, create_consumer: Callable[..., Consumer]
) -> None:
    tenant = create_consumer()
    insert_events(engine, tenant["consumer_id"], 2)
    relay = OutboxRelay.from_settings(settings, engine, threading.Event())
    registry = CollectorRegistry()
    registry.register(RelayCollector(relay))
    try:
        relay.leases.join(renew_in_background=False)
        held = samples(generate_latest(registry))
        assert held[("fintegrate_relay_partitions_owned", ())] > 0
        relay.drain()
    finally:
        relay.close()
    values = samples(generate_latest(registry))
    published = values[("fintegrate_relay_published_total", (("result", "published"),))]
    assert published == relay.totals.published >= 2
    assert values[("fintegrate_relay_partitions_owned", ())] == 0  # drain leaves them


def test_dlq_collector_reads_the_tenant_dead_letter_depth(
    settings: Settings, create_consumer: Callable[..., Consumer]
) -> None:
    tenant = create_consumer()
    name = tenant["name"]
    empty, one = CollectorRegistry(), CollectorRegistry()
    empty.register(DlqCollector(settings.broker.url, name))
    assert samples(generate_latest(empty))[("fintegrate_dlq_messages", (("consumer", name),))] == 0
    with amqp_channel(settings.broker.url) as channel:
        channel.basic_publish(
            "", topology.dlq_name(name), b"{}", pika.BasicProperties(delivery_mode=2)
        )
    one.register(DlqCollector(settings.broker.url, name))
    assert samples(generate_latest(one))[("fintegrate_dlq_messages", (("consumer", name),))] == 1
