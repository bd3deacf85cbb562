"""The event consumer worker against the real broker, database and a live API."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from service.config import Settings
from service.messaging import topology
from service.messaging.consume import WorkerConfig
from service.messaging.consume.consumer import EventConsumer
from service.messaging.messages import EventMessage
from service.messaging.publish.relay import OutboxRelay
from tests.conftest import unique_name
from tests.support.handlers import LOG_ENV
from tests.support.outbox import (
    amqp_channel,
    event_rows,
    queue_depth,
    wait_until,
)
from tests.support.processes import sigterm_when
from tests.support.tcp_proxy import TcpProxy

Tenant = dict[str, Any]


@pytest.fixture
def api(live_server: str, settings: Settings) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server, timeout=10) as client:
        yield client


@pytest.fixture
def tenant(api: httpx.Client, settings: Settings) -> Tenant:
    assert settings.admin_api_key
    response = api.post(
        "/consumer/data",
        json={"name": unique_name("w")},
        headers={"X-Admin-Key": settings.admin_api_key},
    )
    assert response.status_code == 201, response.text
    data: Tenant = response.json()["data"]
    return data


def create_customers(api: httpx.Client, tenant: Tenant, count: int) -> list[str]:
    """``count`` new customers of the tenant; their ids."""
    headers = {"X-API-Key": tenant["api_key"]}
    created = []
    for index in range(count):
        response = api.post("/customer/data", json={"name": f"c{index}"}, headers=headers)
        assert response.status_code == 201, response.text
        created.append(response.json()["data"]["customer_id"])
    return created


def change_status(api: httpx.Client, tenant: Tenant, customer_id: str, status: str) -> None:
    response = api.patch(
        f"/customer/data/{customer_id}/status",
        json={"status": status},
        headers={"X-API-Key": tenant["api_key"]},
    )
    assert response.status_code == 200, response.text


def tenant_events(engine: Engine, tenant: Tenant) -> list[str]:
    """Every event of the tenant (its consumer_created event included), oldest first."""
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT event_id FROM customer_events WHERE consumer_id = :id "
                "ORDER BY created_at, event_id"
            ),
            {"id": tenant["consumer_id"]},
        )
        return [str(row.event_id) for row in rows]


def receipts(engine: Engine, tenant: Tenant) -> list[tuple[str, str]]:
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT event_id, status FROM consumer_event_receipts WHERE consumer_id = :id"),
            {"id": tenant["consumer_id"]},
        )
        return [(str(row.event_id), row.status) for row in rows]


def publish_all(settings: Settings, engine: Engine) -> None:
    OutboxRelay(settings, engine, threading.Event()).drain()


class WorkerThread:
    """An EventConsumer in a thread, recording the events its handler saw."""

    def __init__(
        self,
        settings: Settings,
        tenant: Tenant,
        api_url: str,
        handler: Any = None,
        **options: Any,
    ):
        self.seen: list[str] = []
        self.stop = threading.Event()
        worker_settings = settings.model_copy(
            update={"api_url": api_url, "api_key": tenant["api_key"]}
        )
        self.consumer = EventConsumer(
            WorkerConfig.from_settings(worker_settings),
            tenant["name"],
            self.stop,
            handler or self.record,
            **options,
        )
        self.thread = threading.Thread(target=self.consumer.run, daemon=True)

    def record(self, message: EventMessage) -> None:
        self.seen.append(message.event_id)

    def __enter__(self) -> WorkerThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


def test_end_to_end_100_customers_are_delivered(
    settings: Settings, engine: Engine, api: httpx.Client, tenant: Tenant, live_server: str
) -> None:
    relay_stop = threading.Event()
    relay = OutboxRelay(settings, engine, relay_stop)
    relay_thread = threading.Thread(target=relay.run, daemon=True)
    relay_thread.start()
    try:
        with WorkerThread(settings, tenant, live_server) as worker:
            create_customers(api, tenant, 100)
            assert wait_until(lambda: len(receipts(engine, tenant)) >= 101, timeout=120)
    finally:
        relay_stop.set()
        relay_thread.join(30)
    events = tenant_events(engine, tenant)
    assert len(events) == 101  # 100 customer_creation + the tenant's consumer_created
    assert sorted(worker.seen) == sorted(events)
    assert sorted(event for event, _ in receipts(engine, tenant)) == sorted(events)
    rows = event_rows(engine, events).values()
    assert {(row.publish_status, row.deliver_status) for row in rows} == {
        ("published", "delivered")
    }
    assert queue_depth(settings.rabbitmq_url, tenant["queue_name"]) == 0


def test_handler_failure_sends_a_failed_receipt_and_dead_letters(
    settings: Settings, engine: Engine, api: httpx.Client, tenant: Tenant, live_server: str
) -> None:
    def broken(message: EventMessage) -> None:
        raise RuntimeError("handler exploded")

    create_customers(api, tenant, 1)
    publish_all(settings, engine)
    events = tenant_events(engine, tenant)
    dlq = topology.dlq_name(tenant["name"])
    with WorkerThread(settings, tenant, live_server, broken):
        assert wait_until(lambda: queue_depth(settings.rabbitmq_url, dlq) == len(events))
    assert sorted(receipts(engine, tenant)) == sorted((event, "failed") for event in events)
    rows = event_rows(engine, events).values()
    assert {row.deliver_status for row in rows} == {"failed"}
    assert queue_depth(settings.rabbitmq_url, tenant["queue_name"]) == 0


def test_poison_message_goes_to_the_dlq_without_calling_the_api(
    settings: Settings, engine: Engine, tenant: Tenant, live_server: str
) -> None:
    with amqp_channel(settings.rabbitmq_url) as channel:
        channel.basic_publish(
            topology.EXCHANGE, topology.routing_key("customer_creation", tenant["name"]), b"\xff{"
        )
    dlq = topology.dlq_name(tenant["name"])
    with WorkerThread(settings, tenant, live_server) as worker:
        assert wait_until(lambda: queue_depth(settings.rabbitmq_url, dlq) == 1)
    assert worker.consumer.stats.poison == 1
    assert worker.seen == []
    assert receipts(engine, tenant) == []


def test_api_down_means_no_handler_call_no_ack_and_a_later_redelivery(
    settings: Settings,
    engine: Engine,
    api: httpx.Client,
    tenant: Tenant,
    live_server: str,
    tcp_proxy_factory: Callable[[str, int], TcpProxy],
) -> None:
    create_customers(api, tenant, 1)
    publish_all(settings, engine)
    events = tenant_events(engine, tenant)
    host, port = live_server.removeprefix("http://").split(":")
    proxy = tcp_proxy_factory(host, int(port))
    proxy.refuse()
    with WorkerThread(settings, tenant, proxy.url_for(live_server)) as down:
        assert wait_until(lambda: queue_depth(settings.rabbitmq_url, tenant["queue_name"]) == 0)
        # held unacked; the last delivered sequences are unknown, so no handler runs yet
        assert not wait_until(lambda: bool(down.seen), timeout=1.0)
    assert receipts(engine, tenant) == []
    assert queue_depth(settings.rabbitmq_url, tenant["queue_name"]) == 2  # back, not lost
    proxy.pass_through()
    with WorkerThread(settings, tenant, proxy.url_for(live_server)) as up:
        assert wait_until(lambda: len(receipts(engine, tenant)) == 2)
    assert sorted(up.seen) == sorted(events)
    assert sorted(receipts(engine, tenant)) == sorted((event, "processed") for event in events)
    rows = event_rows(engine, events).values()
    assert {row.deliver_status for row in rows} == {"delivered"}


def test_api_outage_while_running_is_retried_until_recorded(
    settings: Settings,
    engine: Engine,
    api: httpx.Client,
    tenant: Tenant,
    live_server: str,
    tcp_proxy_factory: Callable[[str, int], TcpProxy],
) -> None:
    host, port = live_server.removeprefix("http://").split(":")
    proxy = tcp_proxy_factory(host, int(port))
    [customer_id] = create_customers(api, tenant, 1)
    publish_all(settings, engine)
    with WorkerThread(settings, tenant, proxy.url_for(live_server)) as worker:
        assert wait_until(lambda: len(receipts(engine, tenant)) == 2)  # sequences now known
        proxy.reset()
        proxy.close_all()  # the worker's kept-alive API connection too
        change_status(api, tenant, customer_id, "suspended")
        change_status(api, tenant, customer_id, "active")
        publish_all(settings, engine)
        assert wait_until(lambda: len(worker.seen) == 3)  # handled, first receipt retried
        assert len(receipts(engine, tenant)) == 2
        proxy.pass_through()
        assert wait_until(lambda: len(receipts(engine, tenant)) == 4)
    assert sorted(worker.seen) == sorted(tenant_events(engine, tenant))
    assert queue_depth(settings.rabbitmq_url, tenant["queue_name"]) == 0


def worker_environment(
    settings: Settings, tenant: Tenant, api_url: str, log: Path
) -> dict[str, str]:
    values = settings.model_copy(update={"api_url": api_url, "api_key": tenant["api_key"]})
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FINTEGRATE_")}
    for name, value in values.model_dump(exclude_none=True).items():
        environment[f"FINTEGRATE_{name.upper()}"] = str(value)
    environment[LOG_ENV] = str(log)
    environment["PYTHONPATH"] = str(Path(__file__).resolve().parents[4])
    return environment


def test_sigterm_finishes_the_messages_in_hand_and_loses_nothing(
    settings: Settings,
    engine: Engine,
    api: httpx.Client,
    tenant: Tenant,
    live_server: str,
    tmp_path: Path,
) -> None:
    create_customers(api, tenant, 3)
    publish_all(settings, engine)
    events = tenant_events(engine, tenant)
    log = tmp_path / "handler.log"
    command = [
        str(Path(sys.executable).parent / "fintegrate"),
        "consume",
        "--consumer",
        tenant["name"],
        "--handler",
        "tests.support.handlers:slow_handler",
        "--prefetch",
        "3",
    ]
    process = subprocess.Popen(
        command,
        env=worker_environment(settings, tenant, live_server, log),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, stderr = sigterm_when(process, lambda: log.exists() and "start" in log.read_text())
    assert process.returncode == 0, stderr
    lines = log.read_text().splitlines()
    started = {line.removeprefix("start ") for line in lines if line.startswith("start ")}
    finished = {line.removeprefix("done ") for line in lines if line.startswith("done ")}
    assert started and started == finished and len(lines) == 2 * len(started)
    assert sorted(receipts(engine, tenant)) == sorted((event, "processed") for event in started)
    assert queue_depth(settings.rabbitmq_url, tenant["queue_name"]) == len(events) - len(started)
