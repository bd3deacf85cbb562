"""Tenant provisioning against the real broker: exact arguments, bindings, DLQ, drift."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from service.config import Settings
from service.messaging import topology
from service.messaging.connection import BrokerUnavailable, vhost_of
from service.messaging.operate.inspection import inspect_tenant
from service.messaging.operate.management import ManagementClient
from service.messaging.operate.provisioning import TopologyMismatch, provision_consumer_queues
from tests.support.outbox import amqp_channel, new_consumer_name, queue_depth
from tests.support.tcp_proxy import TcpProxy

EXPECTED_ARGUMENTS = {
    "x-dead-letter-exchange": "customer_events",
    "x-message-ttl": 86400000,
    "x-max-length": 100000,
    "x-overflow": "reject-publish",
}


def management(settings: Settings) -> ManagementClient:
    assert settings.broker.management_url
    return ManagementClient(settings.broker.management_url, vhost_of(settings.broker.url))


def publish(url: str, routing_key: str, body: bytes = b"{}") -> None:
    with amqp_channel(url) as channel:
        channel.confirm_delivery()
        channel.basic_publish(topology.EXCHANGE, routing_key, body, mandatory=True)


def test_queue_has_exactly_the_spec_arguments_and_bindings(settings: Settings) -> None:
    provision_consumer_queues(settings, "consumer_test001")
    with management(settings) as client:
        queue = client.queue("customer_notification_consumer_test001")
        dlq = client.queue("customer_notification_consumer_test001_DLQ")
        bindings = client.exchange_bindings("customer_notification_consumer_test001")
        dlq_bindings = client.exchange_bindings("customer_notification_consumer_test001_DLQ")
    assert queue is not None and dlq is not None
    assert queue["durable"] and dlq["durable"]
    assert queue["arguments"] == {
        **EXPECTED_ARGUMENTS,
        "x-dead-letter-routing-key": "customer.dlq.consumer_test001",
    }
    assert bindings == sorted(
        [
            "customer.creation.consumer_test001",
            "customer.deletion.consumer_test001",
            "customer.status_change.consumer_test001",
            "customer.erasure.consumer_test001",
            "customer.consumer_created.consumer_test001",
        ]
    )
    assert dlq["arguments"] == {"x-max-length": 100000, "x-overflow": "drop-head"}
    assert dlq_bindings == ["customer.dlq.consumer_test001"]


def test_customer_creation_is_routed_to_the_tenant_queue(settings: Settings) -> None:
    provision_consumer_queues(settings, "consumer_test001")
    queue = topology.queue_name("consumer_test001")
    before = queue_depth(settings.broker.url, queue)
    key = topology.routing_key("customer_creation", "consumer_test001")
    assert key == "customer.creation.consumer_test001"
    publish(settings.broker.url, key)
    with amqp_channel(settings.broker.url) as channel:
        channel.queue_purge(topology.dlq_name("consumer_test001"))
        method, _, _ = channel.basic_get(queue, auto_ack=True)
        for _ in range(before):
            method, _, _ = channel.basic_get(queue, auto_ack=True)
    assert method is not None and method.routing_key == "customer.creation.consumer_test001"


def test_rejected_message_lands_in_dlq_and_stays_there(settings: Settings) -> None:
    name = new_consumer_name()
    result = provision_consumer_queues(settings, name)
    publish(settings.broker.url, topology.routing_key("customer_deletion", name), b"poison")
    with amqp_channel(settings.broker.url) as channel:
        method, _, _ = channel.basic_get(result.queue)
        assert method is not None
        channel.basic_reject(method.delivery_tag, requeue=False)
    time.sleep(1.0)  # give a mis-bound DLQ key time to loop back (it must not)
    assert queue_depth(settings.broker.url, result.dlq) == 1
    assert queue_depth(settings.broker.url, result.queue) == 0
    with amqp_channel(settings.broker.url) as channel:
        method, properties, body = channel.basic_get(result.dlq, auto_ack=True)
    assert body == b"poison"
    assert properties.headers["x-death"][0]["reason"] == "rejected"
    assert properties.headers["x-death"][0]["routing-keys"] == [
        topology.routing_key("customer_deletion", name)
    ]


def test_provisioning_twice_is_idempotent_and_keeps_messages(settings: Settings) -> None:
    name = new_consumer_name()
    first = provision_consumer_queues(settings, name)
    publish(settings.broker.url, topology.routing_key("customer_creation", name))
    second = provision_consumer_queues(settings, name)
    assert first == second
    assert queue_depth(settings.broker.url, first.queue) == 1
    assert inspect_tenant(settings, name).ok


@pytest.mark.parametrize("with_management", [True, False])
def test_differing_live_arguments_are_reported_not_crashed(
    settings: Settings, with_management: bool
) -> None:
    name = new_consumer_name()
    with amqp_channel(settings.broker.url) as channel:
        channel.queue_declare(
            topology.queue_name(name), durable=True, arguments={"x-message-ttl": 1000}
        )
    if not with_management:
        settings = settings.updated({"rabbitmq_management_url": None})
    with pytest.raises(TopologyMismatch) as caught:
        provision_consumer_queues(settings, name)
    drift = {item.argument: (item.live, item.expected) for item in caught.value.report.drift}
    assert str(drift["x-message-ttl"][0]) == "1000"
    assert str(drift["x-message-ttl"][1]) == "86400000"
    # every difference, with or without the management API (the 406s are followed)
    assert drift["x-max-length"] == (None, 100000)
    assert drift["x-overflow"] == (None, "reject-publish")
    assert drift["x-dead-letter-routing-key"] == (None, topology.dlq_routing_key(name))
    assert f"queues provision {name} --migrate" in str(caught.value)
    # the broker connection survived: the rest still works
    assert provision_consumer_queues(settings, new_consumer_name()).queue


def test_ttl_and_max_length_come_from_the_settings_and_a_change_is_reported(
    settings: Settings,
) -> None:
    name = new_consumer_name()
    small = settings.updated({"queue_message_ttl_ms": 1500, "queue_max_length": 300})
    provision_consumer_queues(small, name)
    with management(small) as client:
        queue = client.queue(topology.queue_name(name))
    assert queue is not None
    assert queue["arguments"]["x-message-ttl"] == 1500
    assert queue["arguments"]["x-max-length"] == 300
    assert inspect_tenant(small, name).ok
    drift = {item.argument: item for item in inspect_tenant(settings, name).drift}
    assert str(drift["x-message-ttl"].live) == "1500"
    assert str(drift["x-message-ttl"].expected) == "86400000"
    assert str(drift["x-max-length"].expected) == "100000"
    with pytest.raises(TopologyMismatch):
        provision_consumer_queues(settings, name)


def test_extra_and_missing_bindings_are_reported(settings: Settings) -> None:
    name = new_consumer_name()
    result = provision_consumer_queues(settings, name)
    with amqp_channel(settings.broker.url) as channel:
        channel.queue_bind(result.queue, topology.EXCHANGE, f"customer.*.{name}")
        channel.queue_unbind(
            result.queue, topology.EXCHANGE, topology.routing_key("customer_deletion", name)
        )
    report = inspect_tenant(settings, name)
    assert not report.ok
    assert report.extra_bindings == [f"customer.*.{name}"]
    assert report.missing_bindings == [topology.routing_key("customer_deletion", name)]
    assert any("unexpected binding" in line for line in report.advice())


def test_unreachable_broker_raises_quickly(
    settings: Settings, tcp_proxy_factory: Callable[[str, int], TcpProxy]
) -> None:
    proxy = tcp_proxy_factory("127.0.0.1", 5672)
    proxy.blackhole()
    broken = settings.updated({"rabbitmq_url": proxy.url_for(settings.broker.url)})
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable):
        provision_consumer_queues(broken, new_consumer_name())
    assert time.monotonic() - started < 10  # bounded, not hanging on the dead link
