"""Quorum tenant queues (``FINTEGRATE_QUEUE_TYPE=quorum``) on the local broker.

For a clustered RabbitMQ the tenant queue and its DLQ can be quorum queues: replicated,
and with ``x-delivery-limit`` a message requeued too often is dead-lettered instead of
looping forever. Provisioning, inspection and the API's consumer creation all honour it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.messaging import topology
from service.messaging.operate.inspection import inspect_tenant
from service.messaging.operate.provisioning import provision_consumer_queues
from tests.support.names import unique_name
from tests.support.outbox import amqp_channel, declared_queue, queue_depth

DELIVERY_LIMIT = 2


@pytest.fixture
def quorum_settings(settings: Settings) -> Settings:
    return settings.updated({"queue_type": "quorum", "quorum_delivery_limit": DELIVERY_LIMIT})


def test_quorum_queue_and_dlq_are_declared_with_the_delivery_limit(
    quorum_settings: Settings,
) -> None:
    name = unique_name("quorum")
    provision_consumer_queues(quorum_settings, name)
    provision_consumer_queues(quorum_settings, name)  # idempotent: no 406 on a second run

    queue = declared_queue(quorum_settings, topology.queue_name(name))
    dlq = declared_queue(quorum_settings, topology.dlq_name(name))
    assert queue["type"] == dlq["type"] == "quorum"
    assert queue["arguments"] == {
        "x-dead-letter-exchange": topology.EXCHANGE,
        "x-dead-letter-routing-key": topology.dlq_routing_key(name),
        "x-message-ttl": topology.MESSAGE_TTL_MS,
        "x-max-length": topology.MAX_LENGTH,
        "x-overflow": "reject-publish",
        "x-queue-type": "quorum",
        "x-delivery-limit": DELIVERY_LIMIT,
    }
    assert inspect_tenant(quorum_settings, name).ok


def requeue_until_dead_lettered(channel: Any, url: str, queue: str, dlq: str) -> int:
    """Get and requeue the queue's message until it reaches the DLQ; how many deliveries."""
    deliveries = 0
    for _ in range(100):  # bounded; the delivery limit ends it after a few rounds
        if queue_depth(url, dlq):
            break
        method, _, _ = channel.basic_get(queue, auto_ack=False)
        if method is None:  # a requeue or dead-lettering is still being applied
            time.sleep(0.05)
            continue
        deliveries += 1
        channel.basic_nack(method.delivery_tag, requeue=True)
    return deliveries


def test_message_requeued_past_the_delivery_limit_is_dead_lettered(
    quorum_settings: Settings,
) -> None:
    name = unique_name("quorum")
    provision_consumer_queues(quorum_settings, name)
    url, queue = quorum_settings.broker.url, topology.queue_name(name)
    dlq = topology.dlq_name(name)
    with amqp_channel(url) as channel:
        channel.confirm_delivery()
        channel.basic_publish(
            topology.EXCHANGE, topology.routing_key("customer_creation", name), b"{}"
        )
        deliveries = requeue_until_dead_lettered(channel, url, queue, dlq)

    assert queue_depth(url, dlq) == 1
    assert queue_depth(url, queue) == 0
    assert deliveries == DELIVERY_LIMIT + 1  # the first delivery and DELIVERY_LIMIT returns


def test_consumer_created_through_the_api_gets_quorum_queues(
    quorum_settings: Settings, create_quorum_consumer: Callable[[], dict[str, Any]]
) -> None:
    created = create_quorum_consumer()

    assert created["queue_provisioned"] is True
    assert declared_queue(quorum_settings, created["queue_name"])["type"] == "quorum"


@pytest.fixture
def create_quorum_consumer(
    quorum_settings: Settings, admin_headers: dict[str, str]
) -> Callable[[], dict[str, Any]]:
    def create() -> dict[str, Any]:
        with TestClient(create_app(quorum_settings)) as client:
            response = client.post(
                "/consumer/data", json={"name": unique_name("quorum")}, headers=admin_headers
            )
        assert response.status_code == 201, response.text
        data: dict[str, Any] = response.json()["data"]
        return data

    return create
