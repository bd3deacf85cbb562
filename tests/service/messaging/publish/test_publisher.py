"""The confirming publisher against the real broker: confirms, returns, lost links."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace

import pytest

from service.config import Settings
from service.messaging.connection import BrokerUnavailable
from service.messaging.messages import OutboundEvent, parse_message
from service.messaging.operate.provisioning import provision_consumer_queues
from service.messaging.publish.publisher import ConfirmingPublisher, outgoing_event
from tests.support.outbox import drain_queue, new_consumer_name, outbound_event, queue_depth
from tests.support.tcp_proxy import TcpProxy


def event_for(consumer_name: str, event_type: str = "customer_creation") -> OutboundEvent:
    return replace(outbound_event(event_type, consumer_name), metadata={"request_id": "r1"})


def test_batch_is_confirmed_and_carries_the_spec_format(settings: Settings) -> None:
    name = new_consumer_name()
    queue = provision_consumer_queues(settings, name).queue
    events = [event_for(name) for _ in range(50)]
    with ConfirmingPublisher(settings.rabbitmq_url) as publisher:
        results = publisher.publish_batch([outgoing_event(event) for event in events])
    assert all(result.ok for result in results)
    messages = drain_queue(settings.rabbitmq_url, queue)
    assert len(messages) == 50
    method, properties, body = messages[0]
    assert method.routing_key == f"customer.creation.{name}"
    assert properties.message_id == events[0].event_id
    assert properties.type == "customer_creation"
    assert properties.content_type == "application/json"
    assert properties.delivery_mode == 2
    assert properties.timestamp == int(events[0].occurred_at.timestamp())
    document = json.loads(body)
    assert set(document) == {
        "event_id",
        "event_type",
        "occurred_at",
        "consumer",
        "customer_id",
        "sequence",
        "payload",
        "metadata",
        "schema_version",
    }
    assert document["consumer"] == {"consumer_id": events[0].consumer_id, "name": name}
    assert parse_message(body).event_id == events[0].event_id


def test_unroutable_message_is_not_confirmed(settings: Settings) -> None:
    name = new_consumer_name()
    queue = provision_consumer_queues(settings, name).queue
    routed, unroutable = event_for(name), event_for(new_consumer_name("nobody"))
    with ConfirmingPublisher(settings.rabbitmq_url) as publisher:
        results = publisher.publish_batch([outgoing_event(unroutable), outgoing_event(routed)])
    assert results[0].ok is False
    assert results[0].reason is not None and "unroutable" in results[0].reason
    assert results[1].ok is True
    assert queue_depth(settings.rabbitmq_url, queue) == 1


def test_unreachable_broker_raises(
    settings: Settings, tcp_proxy_factory: Callable[[str, int], TcpProxy]
) -> None:
    proxy = tcp_proxy_factory("127.0.0.1", 5672)
    proxy.refuse()
    publisher = ConfirmingPublisher(proxy.url_for(settings.rabbitmq_url), connect_timeout=1.0)
    with pytest.raises(BrokerUnavailable):
        publisher.publish(outgoing_event(event_for("anyone")))


def test_lost_connection_fails_the_batch_then_reconnects(
    settings: Settings, tcp_proxy_factory: Callable[[str, int], TcpProxy]
) -> None:
    name = new_consumer_name()
    queue = provision_consumer_queues(settings, name).queue
    proxy = tcp_proxy_factory("127.0.0.1", 5672)
    with ConfirmingPublisher(proxy.url_for(settings.rabbitmq_url), confirm_timeout=3) as publisher:
        assert publisher.publish(outgoing_event(event_for(name))).ok
        proxy.close_all()
        lost = publisher.publish_batch([outgoing_event(event_for(name)) for _ in range(3)])
        assert not any(result.ok for result in lost)
        assert publisher.publish(outgoing_event(event_for(name))).ok
    assert queue_depth(settings.rabbitmq_url, queue) >= 2
