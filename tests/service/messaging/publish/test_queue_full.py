"""A tenant queue at its limit (`x-overflow: reject-publish`): the relay holds that tenant only."""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from service.config import Settings
from service.messaging import topology
from service.messaging.publish.relay import OutboxRelay
from tests.support.outbox import (
    ProvisionedTenant,
    amqp_channel,
    event_rows,
    insert_consumer,
    insert_customer_events,
    insert_events,
    new_consumer_name,
    queue_depth,
    relay_running,
    wait_until,
)

MAX_LENGTH = 5
CUSTOMERS = 3
PER_CUSTOMER = 10


def declare_small_queue(url: str, name: str) -> str:
    """The tenant's queue, bound as provisioning binds it, refusing publishes past 5."""
    queue = topology.queue_name(name)
    with amqp_channel(url) as channel:
        channel.exchange_declare(topology.EXCHANGE, topology.EXCHANGE_TYPE, durable=True)
        arguments = {"x-max-length": MAX_LENGTH, "x-overflow": "reject-publish"}
        channel.queue_declare(queue, durable=True, arguments=arguments)
        for key in topology.queue_bindings(name):
            channel.queue_bind(queue, topology.EXCHANGE, key)
    return queue


def consume_slowly(url: str, queue: str, expected: int, timeout: float) -> list[dict[str, str]]:
    """Get and ack one message at a time, as a slow worker would, until ``expected`` came."""
    bodies: list[dict[str, str]] = []
    deadline = time.monotonic() + timeout
    with amqp_channel(url) as channel:
        while len(bodies) < expected and time.monotonic() < deadline:
            method, _, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                time.sleep(0.05)
                continue
            bodies.append(json.loads(body))
            time.sleep(0.02)
    return bodies


@pytest.fixture
def running_relay(outbox_settings: Settings, outbox_engine: Engine) -> Iterator[OutboxRelay]:
    settings = outbox_settings.updated({"relay_poll_seconds": 0.5})
    with relay_running(settings, outbox_engine, batch_size=20) as relay:
        yield relay


def test_a_full_queue_holds_its_tenant_in_order_and_no_one_else(
    outbox_settings: Settings,
    outbox_engine: Engine,
    tenant: ProvisionedTenant,
    running_relay: OutboxRelay,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="service.messaging.publish.tenants")
    url = outbox_settings.broker.url
    _, other, other_queues = tenant
    name = new_consumer_name("full")
    queue = declare_small_queue(url, name)
    full = insert_consumer(outbox_engine, name)
    ids = insert_customer_events(outbox_engine, full, CUSTOMERS, PER_CUSTOMER)
    assert wait_until(lambda: running_relay.totals.refused > 0, timeout=30)
    assert queue_depth(url, queue) == MAX_LENGTH  # full; the rest waits in the outbox
    other_ids = insert_events(outbox_engine, other, 10)
    assert wait_until(lambda: queue_depth(url, other_queues.queue) == 10, timeout=30)

    consumed = consume_slowly(url, queue, len(ids), timeout=120)

    assert sorted(event["event_id"] for event in consumed) == sorted(ids)  # each once
    sequences: dict[str, list[int]] = defaultdict(list)
    for event in consumed:
        sequences[event["customer_id"]].append(int(event["sequence"]))
    assert all(seq == list(range(1, PER_CUSTOMER + 1)) for seq in sequences.values()), sequences
    assert wait_until(
        lambda: (
            {r.publish_status for r in event_rows(outbox_engine, ids).values()} == {"published"}
        ),
        timeout=30,
    )
    rows = event_rows(outbox_engine, ids + other_ids)
    assert {row.publish_try_count for row in rows.values()} == {1}  # a nack is no attempt
    assert {row.publish_failure_reason for row in rows.values()} == {None}
    assert running_relay.totals.failed == 0
    holds = [r for r in caplog.records if "is full" in r.getMessage()]
    assert len(holds) == 1, [r.getMessage() for r in holds]  # one warning, not one per nack
