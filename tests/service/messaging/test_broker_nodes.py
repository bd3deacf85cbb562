"""Several broker nodes in one setting: the first that answers serves, a dead one is skipped.

Runs on the local broker with a dead node (a closed loopback port) in front of it; the
three-node cluster tests are in tests/reliability/test_rabbit_cluster.py.
"""

from __future__ import annotations

from collections.abc import Callable

import pika
import pytest
from pydantic import ValidationError

from service.config import Settings, load_settings
from service.messaging import topology
from service.messaging.connection import BrokerNodes, BrokerUnavailable, open_blocking
from service.messaging.operate.management import ManagementClient
from service.messaging.operate.provisioning import provision_consumer_queues
from service.messaging.publish.publisher import ConfirmingPublisher, OutgoingMessage
from service.ops.checks import check_broker
from tests.support.names import unique_name
from tests.support.outbox import drain_queue
from tests.support.ports import closed_port
from tests.support.tcp_proxy import TcpProxy


@pytest.fixture
def dead_first(settings: Settings) -> Callable[[str], str]:
    """``url`` preceded by a node on a closed port with the same login and vhost."""
    port = closed_port()

    def listed(url: str) -> str:
        dead = url.replace("127.0.0.1:5672", f"127.0.0.1:{port}").replace(
            "127.0.0.1:15672", f"127.0.0.1:{port}"
        )
        assert dead != url
        return f"{dead},{url}"

    return listed


def test_connection_goes_to_the_first_node_that_answers(
    settings: Settings, dead_first: Callable[[str], str]
) -> None:
    urls = dead_first(settings.broker.url)
    connection = open_blocking(urls, connect_timeout=1.0)
    try:
        assert connection.is_open
    finally:
        connection.close()
    assert BrokerNodes.of(urls).preferred == settings.broker.url


def test_the_node_that_answered_is_tried_first_next_time(
    settings: Settings, dead_first: Callable[[str], str]
) -> None:
    urls = dead_first(settings.broker.url)
    dead = urls.split(",")[0]
    assert next(BrokerNodes.of(urls).in_order()) == dead
    open_blocking(urls, connect_timeout=1.0).close()

    assert list(BrokerNodes.of(urls).in_order()) == [settings.broker.url, dead]


def test_no_node_answering_names_every_node(settings: Settings) -> None:
    first, second = closed_port(), closed_port()
    urls = f"amqp://u:p@127.0.0.1:{first}/v,amqp://u:p@127.0.0.1:{second}/v"
    with pytest.raises(BrokerUnavailable) as raised:
        open_blocking(urls, connect_timeout=1.0)
    assert f"127.0.0.1:{first}/v" in str(raised.value)
    assert f"127.0.0.1:{second}/v" in str(raised.value)
    assert "p@" not in str(raised.value)


def test_publisher_confirms_through_a_list_with_a_dead_node(
    settings: Settings, dead_first: Callable[[str], str]
) -> None:
    name = unique_name("nodes")
    queues = provision_consumer_queues(settings, name)
    key = topology.routing_key("customer_creation", name)
    message = OutgoingMessage(key, b"{}", pika.BasicProperties(message_id="m-1"))

    with ConfirmingPublisher(dead_first(settings.broker.url), connect_timeout=1.0) as publisher:
        result = publisher.publish(message)

    assert result.ok, result.reason
    assert [p.message_id for _, p, _ in drain_queue(settings.broker.url, queues.queue)] == ["m-1"]


def test_a_silent_node_is_left_for_the_next_one(
    settings: Settings, tcp_proxy_factory: Callable[[str, int], TcpProxy]
) -> None:
    name = unique_name("nodes")
    queues = provision_consumer_queues(settings, name)
    proxy = tcp_proxy_factory("127.0.0.1", 5672)
    urls = f"{proxy.url_for(settings.broker.url)},{settings.broker.url}"
    key = topology.routing_key("customer_creation", name)

    def message(number: int) -> OutgoingMessage:
        return OutgoingMessage(key, b"{}", pika.BasicProperties(message_id=f"m-{number}"))

    with ConfirmingPublisher(urls, confirm_timeout=2, connect_timeout=1.0) as publisher:
        assert publisher.publish(message(1)).ok  # through the proxy, the first node
        proxy.blackhole()  # that node goes silent: no confirm, no error
        assert not publisher.publish(message(2)).ok
        assert BrokerNodes.of(urls).preferred == settings.broker.url
        assert publisher.publish(message(3)).ok  # the next node, at once

    arrived = {p.message_id for _, p, _ in drain_queue(settings.broker.url, queues.queue)}
    assert {"m-1", "m-3"} <= arrived  # m-2 may have arrived too: it is retried, never lost


def test_provisioning_and_readiness_use_the_list(
    settings: Settings, dead_first: Callable[[str], str]
) -> None:
    listed = settings.updated(
        {
            "rabbitmq_url": dead_first(settings.broker.url),
            "rabbitmq_management_url": dead_first(str(settings.broker.management_url)),
        }
    )
    name = unique_name("nodes")
    result = provision_consumer_queues(listed, name)

    assert result.queue == topology.queue_name(name)
    assert check_broker(listed.broker).ok


def test_management_client_moves_to_the_next_node(
    settings: Settings, dead_first: Callable[[str], str]
) -> None:
    name = unique_name("nodes")
    provision_consumer_queues(settings, name)
    base = dead_first(str(settings.broker.management_url))
    vhost = settings.broker.url.rsplit("/", 1)[1]

    with ManagementClient(base, vhost) as management:
        queue = management.queue(topology.queue_name(name))
        nodes = management.nodes()

    assert queue is not None and queue["name"] == topology.queue_name(name)
    assert nodes and all("name" in node for node in nodes)


@pytest.mark.parametrize(
    ("setting", "value", "problem"),
    [
        ("rabbitmq_url", "amqp://u:p@h1:1/a,amqp://u:p@h2:1/b", "one login and vhost"),
        ("rabbitmq_url", "amqp://u:p@h1:1/a,amqp://x:p@h2:1/a", "one login and vhost"),
        ("rabbitmq_url", "amqp://u:p@h1:1/a,http://u:p@h2:1/a", "amqp"),
        ("rabbitmq_url", " , ", "names no URL"),
        ("rabbitmq_management_url", "http://u:p@h1:1,http://u:q@h2:1", "one login"),
    ],
)
def test_settings_refuse_node_lists_of_different_clusters(
    setting: str, value: str, problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem):
        load_settings(**{setting: value})  # type: ignore[arg-type]


def test_settings_keep_a_clean_node_list() -> None:
    settings = load_settings(
        rabbitmq_url=" amqp://u:p@h1:1/v , amqp://u:p@h2:2/v,",
        rabbitmq_management_url="http://u:p@h1:3,http://u:p@h2:4",
    )
    assert settings.broker.url == "amqp://u:p@h1:1/v,amqp://u:p@h2:2/v"
    assert settings.broker.management_url == "http://u:p@h1:3,http://u:p@h2:4"
