"""RabbitMQ down while customers are created: every request answers 201, nothing is lost."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from service.app import create_app
from service.config import Settings
from service.messaging.publish.relay import OutboxRelay
from tests.support.names import unique_name
from tests.support.outbox import queue_depth, wait_until
from tests.support.tcp_proxy import TcpProxy

CUSTOMERS = 20


def create_tenant(client: TestClient, settings: Settings) -> dict[str, Any]:
    assert settings.auth.admin_api_key
    response = client.post(
        "/consumer/data",
        json={"name": unique_name("outage")},
        headers={"X-Admin-Key": settings.auth.admin_api_key},
    )
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def create_customers(client: TestClient, tenant: dict[str, Any], count: int) -> list[int]:
    headers = {"X-API-Key": tenant["api_key"]}
    return [
        client.post("/customer/data", json={"name": f"n{i}"}, headers=headers).status_code
        for i in range(count)
    ]


def publish_states(engine: Engine, tenant: dict[str, Any]) -> dict[str, int]:
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT publish_status, count(*) AS n FROM customer_events "
                "WHERE consumer_id = :id GROUP BY publish_status"
            ),
            {"id": tenant["consumer_id"]},
        )
        return {row.publish_status: row.n for row in rows}


class RelayThread:
    """A continuously running relay; stopped (and joined) on exit."""

    def __init__(self, settings: Settings, engine: Engine):
        self.stop = threading.Event()
        self.relay = OutboxRelay.from_settings(settings, engine, self.stop)
        self.thread = threading.Thread(target=self.relay.run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(60)

    def __enter__(self) -> RelayThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def proxied(
    settings: Settings, tcp_proxy_factory: Callable[[str, int], TcpProxy]
) -> Iterator[tuple[Settings, TcpProxy]]:
    proxy = tcp_proxy_factory("127.0.0.1", 5672)
    yield settings.updated({"rabbitmq_url": proxy.url_for(settings.broker.url)}), proxy


def test_broker_cut_off_then_back_every_event_published(
    proxied: tuple[Settings, TcpProxy], settings: Settings, engine: Engine
) -> None:
    broken_settings, proxy = proxied
    with TestClient(create_app(broken_settings)) as client:
        tenant = create_tenant(client, broken_settings)
        proxy.refuse()
        proxy.close_all()
        with RelayThread(broken_settings, engine):
            statuses = create_customers(client, tenant, CUSTOMERS)
            assert publish_states(engine, tenant) == {"pending": CUSTOMERS + 1}
            proxy.pass_through()
            assert wait_until(
                lambda: publish_states(engine, tenant) == {"published": CUSTOMERS + 1}, 60
            )
    assert statuses == [201] * CUSTOMERS
    assert queue_depth(settings.broker.url, tenant["queue_name"]) == CUSTOMERS + 1


def rabbitmqctl(*arguments: str) -> None:
    subprocess.run(["rabbitmqctl", *arguments], check=True, capture_output=True, timeout=120)


@pytest.mark.disruptive
def test_rabbitmq_stopped_while_customers_are_created(
    client: TestClient, settings: Settings, engine: Engine
) -> None:
    tenant = create_tenant(client, settings)
    relay = RelayThread(settings, engine)
    try:
        rabbitmqctl("stop_app")
        relay.start()
        statuses = create_customers(client, tenant, CUSTOMERS)
        pending = publish_states(engine, tenant)
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")
    try:
        everything = {"published": CUSTOMERS + 1}
        assert wait_until(lambda: publish_states(engine, tenant) == everything, 120)
    finally:
        relay.close()
    assert statuses == [201] * CUSTOMERS
    assert pending == {"pending": CUSTOMERS + 1}
    assert queue_depth(settings.broker.url, tenant["queue_name"]) == CUSTOMERS + 1
