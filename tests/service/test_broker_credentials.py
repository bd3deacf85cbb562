"""Per-tenant broker users: created with the consumer, read-only on exactly its queue and
DLQ, refused while the consumer is disabled, rotated by the operator; real RabbitMQ logins
through pika, no mock."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.messaging import topology
from tests.support.api import assert_envelope, description
from tests.support.names import unique_name
from tests.support.ports import closed_port
from tests.support.services import RABBIT_PASS
from tests.support.worker import tenant_url

Consumer = dict[str, Any]
LOGIN_REFUSED = (pika.exceptions.ProbableAccessDeniedError, pika.exceptions.AMQPConnectionError)


def connect(broker: dict[str, str]) -> pika.BlockingConnection:
    parameters = pika.URLParameters(tenant_url(broker))
    parameters.connection_attempts = 1
    parameters.socket_timeout = 3
    return pika.BlockingConnection(parameters)


def publish_event(settings: Settings, consumer_name: str, body: bytes = b"{}") -> None:
    """Route one message to the tenant's queue as the operator (the relay's role)."""
    connection = pika.BlockingConnection(pika.URLParameters(settings.broker.url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        key = topology.routing_key("customer_creation", consumer_name)
        channel.basic_publish(topology.EXCHANGE, key, body, mandatory=True)
    finally:
        connection.close()


def refused_by_broker(action: Callable[[Any], Any], broker: dict[str, str]) -> int:
    """Run ``action(channel)`` as the tenant; the reply code of the channel the broker closed."""
    connection = connect(broker)
    try:
        channel = connection.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            action(channel)
        return int(refused.value.reply_code)
    finally:
        if connection.is_open:
            connection.close()


def test_a_new_consumer_gets_its_own_broker_login_shown_once(
    client: TestClient, admin_headers: dict[str, str], settings: Settings
) -> None:
    name = unique_name("broker")
    response = client.post("/consumer/data", json={"name": name}, headers=admin_headers)
    created = assert_envelope(response, 201)
    broker = created["broker"]
    assert created["broker_provisioned"] is True
    assert broker["username"] == f"{name}.{broker['vhost']}"
    assert settings.broker.url.endswith("/" + broker["vhost"])
    assert RABBIT_PASS not in response.text, "the operator's credentials never reach a tenant"
    listed = client.get(f"/consumer/data/{created['consumer_id']}", headers=admin_headers)
    assert broker["password"] not in listed.text


def test_the_tenant_consumes_its_queue_and_is_refused_everything_else(
    create_consumer: Callable[..., Consumer], settings: Settings
) -> None:
    own, other = create_consumer(), create_consumer()
    publish_event(settings, own["name"], b'{"mine": true}')
    publish_event(settings, other["name"], b'{"theirs": true}')

    connection = connect(own["broker"])
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=5)
        channel.queue_declare(own["queue_name"], passive=True)  # what a worker may check
        received = []
        for method, _props, body in channel.consume(own["queue_name"], inactivity_timeout=5):
            assert method is not None, "the tenant's own event never arrived"
            received.append(body)
            channel.basic_ack(method.delivery_tag)
            break
        channel.cancel()
        assert received == [b'{"mine": true}']
        channel.basic_get(own["dlq_name"])  # its DLQ too
    finally:
        connection.close()

    broker = own["broker"]
    assert refused_by_broker(lambda ch: ch.basic_get(other["queue_name"]), broker) == 403
    assert refused_by_broker(lambda ch: ch.basic_consume(other["queue_name"], print), broker) == 403
    assert refused_by_broker(lambda ch: ch.queue_declare(unique_name("q")), broker) == 403
    assert refused_by_broker(lambda ch: ch.queue_delete(own["queue_name"]), broker) == 403
    bind = "customer.creation." + other["name"]
    assert (
        refused_by_broker(
            lambda ch: ch.queue_bind(own["queue_name"], topology.EXCHANGE, bind), broker
        )
        == 403
    )

    def publish(channel: Any) -> None:
        channel.confirm_delivery()
        channel.basic_publish("", own["queue_name"], b"forged")
        channel.basic_publish(topology.EXCHANGE, "customer.creation." + other["name"], b"x")

    assert refused_by_broker(publish, broker) == 403


def wait_closed(connection: pika.BlockingConnection, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            connection.process_data_events(time_limit=0.2)
        except pika.exceptions.AMQPError:
            return True
        if not connection.is_open:
            return True
    return False


def test_disabling_refuses_the_login_and_closes_open_connections(
    client: TestClient, create_consumer: Callable[..., Consumer], admin_headers: dict[str, str]
) -> None:
    consumer = create_consumer()
    path = f"/consumer/data/{consumer['consumer_id']}"
    connection = connect(consumer["broker"])
    connection.channel().basic_consume(consumer["queue_name"], lambda *_: None)

    assert_envelope(client.patch(path, json={"status": "disabled"}, headers=admin_headers), 200)

    assert wait_closed(connection), "the disabled tenant's open connection stays open"
    with pytest.raises(LOGIN_REFUSED):
        connect(consumer["broker"])
    assert_envelope(client.patch(path, json={"status": "active"}, headers=admin_headers), 200)
    connect(consumer["broker"]).close()


def test_rotation_replaces_the_password(
    client: TestClient, create_consumer: Callable[..., Consumer], admin_headers: dict[str, str]
) -> None:
    consumer = create_consumer()
    rotate = f"/consumer/data/{consumer['consumer_id']}/broker-credentials/rotate"
    fresh = assert_envelope(client.post(rotate, headers=admin_headers), 201)
    assert fresh["username"] == consumer["broker"]["username"]
    assert fresh["password"] != consumer["broker"]["password"]
    with pytest.raises(LOGIN_REFUSED):
        connect(consumer["broker"])
    connect(fresh).close()
    assert_envelope(client.post(rotate, headers=consumer["headers"]), 403)
    unknown = f"/consumer/data/{'0' * 8}-0000-4000-8000-{'0' * 12}/broker-credentials/rotate"
    assert_envelope(client.post(unknown, headers=admin_headers), 404)


def test_a_disabled_consumers_rotated_login_stays_refused(
    client: TestClient, create_consumer: Callable[..., Consumer], admin_headers: dict[str, str]
) -> None:
    consumer = create_consumer()
    path = f"/consumer/data/{consumer['consumer_id']}"
    assert_envelope(client.patch(path, json={"status": "disabled"}, headers=admin_headers), 200)
    fresh = assert_envelope(
        client.post(f"{path}/broker-credentials/rotate", headers=admin_headers), 201
    )
    with pytest.raises(LOGIN_REFUSED):
        connect(fresh)


@pytest.fixture
def management_down(settings: Settings) -> Settings:
    dead = f"http://fintegrate_user:x@127.0.0.1:{closed_port()}"
    return settings.updated({"rabbitmq_management_url": dead})


def test_management_unreachable_during_create_leaves_the_broker_user_pending(
    management_down: Settings, client: TestClient, admin_headers: dict[str, str]
) -> None:
    with TestClient(create_app(management_down)) as degraded:
        response = degraded.post(
            "/consumer/data", json={"name": unique_name("pending")}, headers=admin_headers
        )
        created = assert_envelope(response, 201)
    assert created["broker"] is None and created["broker_provisioned"] is False
    assert created["queue_provisioned"] is True
    assert_envelope(client.get("/consumer/me", headers={"X-API-Key": created["api_key"]}), 200)

    rotate = f"/consumer/data/{created['consumer_id']}/broker-credentials/rotate"
    connect(assert_envelope(client.post(rotate, headers=admin_headers), 201)).close()


def test_management_unreachable_refuses_status_changes_and_rotation_with_503(
    management_down: Settings,
    create_consumer: Callable[..., Consumer],
    admin_headers: dict[str, str],
) -> None:
    consumer = create_consumer()
    path = f"/consumer/data/{consumer['consumer_id']}"
    with TestClient(create_app(management_down)) as degraded:
        refused = degraded.patch(path, json={"status": "disabled"}, headers=admin_headers)
        assert_envelope(refused, 503)
        assert "nothing was changed" in description(refused)
        assert degraded.get(path, headers=admin_headers).json()["data"]["status"] == "active"
        rotate = degraded.post(f"{path}/broker-credentials/rotate", headers=admin_headers)
        assert_envelope(rotate, 503)
    connect(consumer["broker"]).close()


def test_consumer_me_names_the_keys_own_consumer(
    client: TestClient, create_consumer: Callable[..., Consumer], admin_headers: dict[str, str]
) -> None:
    consumer = create_consumer()
    me = assert_envelope(client.get("/consumer/me", headers=consumer["headers"]), 200)
    assert me == {
        "consumer_id": consumer["consumer_id"],
        "name": consumer["name"],
        "status": "active",
        "queue_name": consumer["queue_name"],
        "dlq_name": consumer["dlq_name"],
        "broker_username": consumer["broker"]["username"],
    }
    assert_envelope(client.get("/consumer/me", headers=admin_headers), 401)
    assert_envelope(client.get("/consumer/me"), 401)
