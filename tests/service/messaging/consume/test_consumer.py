"""The event consumer worker against the real broker, database and a live API."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
from sqlalchemy import Engine

from service.config import Settings
from service.messaging import topology
from service.messaging.messages import EventMessage
from tests.support.handlers import LOG_ENV
from tests.support.outbox import (
    amqp_channel,
    event_rows,
    queue_depth,
    relay_running,
    wait_until,
)
from tests.support.processes import process_environment, sigterm_when
from tests.support.tcp_proxy import TcpProxy
from tests.support.worker import (
    Tenant,
    WorkerThread,
    change_status,
    create_customers,
    publish_all,
    receipt_statuses,
    tenant_events,
)


def test_end_to_end_100_customers_are_delivered(
    settings: Settings, engine: Engine, api: httpx.Client, tenant: Tenant, live_server: str
) -> None:
    with relay_running(settings, engine), WorkerThread(settings, tenant, live_server) as worker:
        create_customers(api, tenant, 100)
        assert wait_until(lambda: len(receipt_statuses(engine, tenant)) >= 101, timeout=120)
    events = tenant_events(engine, tenant)
    assert len(events) == 101  # 100 customer_creation + the tenant's consumer_created
    assert sorted(worker.seen) == sorted(events)
    assert sorted(event for event, _ in receipt_statuses(engine, tenant)) == sorted(events)
    rows = event_rows(engine, events).values()
    assert {(row.publish_status, row.deliver_status) for row in rows} == {
        ("published", "delivered")
    }
    assert queue_depth(settings.broker.url, tenant["queue_name"]) == 0


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
        assert wait_until(lambda: queue_depth(settings.broker.url, dlq) == len(events))
    assert sorted(receipt_statuses(engine, tenant)) == sorted((event, "failed") for event in events)
    rows = event_rows(engine, events).values()
    assert {row.deliver_status for row in rows} == {"failed"}
    assert queue_depth(settings.broker.url, tenant["queue_name"]) == 0


def test_poison_message_goes_to_the_dlq_without_calling_the_api(
    settings: Settings, engine: Engine, tenant: Tenant, live_server: str
) -> None:
    with amqp_channel(settings.broker.url) as channel:
        channel.basic_publish(
            topology.EXCHANGE, topology.routing_key("customer_creation", tenant["name"]), b"\xff{"
        )
    dlq = topology.dlq_name(tenant["name"])
    with WorkerThread(settings, tenant, live_server) as worker:
        assert wait_until(lambda: queue_depth(settings.broker.url, dlq) == 1)
    assert worker.consumer.stats.poison == 1
    assert worker.seen == []
    assert receipt_statuses(engine, tenant) == []


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
        assert wait_until(lambda: queue_depth(settings.broker.url, tenant["queue_name"]) == 0)
        # held unacked; the last delivered sequences are unknown, so no handler runs yet
        assert not wait_until(lambda: bool(down.seen), timeout=1.0)
    assert receipt_statuses(engine, tenant) == []
    assert queue_depth(settings.broker.url, tenant["queue_name"]) == 2  # back, not lost
    proxy.pass_through()
    with WorkerThread(settings, tenant, proxy.url_for(live_server)) as up:
        assert wait_until(lambda: len(receipt_statuses(engine, tenant)) == 2)
    assert sorted(up.seen) == sorted(events)
    assert sorted(receipt_statuses(engine, tenant)) == sorted(
        (event, "processed") for event in events
    )
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
        # both receipts answered and acked (recorded is not enough: cutting a connection
        # while its answer is on the way would leave the first lane retrying)
        assert wait_until(lambda: worker.consumer.stats.processed == 2)  # sequences now known
        proxy.reset()
        proxy.close_all()  # the worker's kept-alive API connection too
        change_status(api, tenant, customer_id, "suspended")
        change_status(api, tenant, customer_id, "active")
        publish_all(settings, engine)
        assert wait_until(lambda: len(worker.seen) == 3)  # handled, first receipt retried
        assert len(receipt_statuses(engine, tenant)) == 2
        proxy.pass_through()
        assert wait_until(lambda: len(receipt_statuses(engine, tenant)) == 4)
    assert sorted(worker.seen) == sorted(tenant_events(engine, tenant))
    assert queue_depth(settings.broker.url, tenant["queue_name"]) == 0


def worker_environment(
    settings: Settings, tenant: Tenant, api_url: str, log: Path
) -> dict[str, str]:
    values = settings.updated({"api_url": api_url, "api_key": tenant["api_key"]})
    return process_environment(values, {LOG_ENV: str(log)})


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
    assert sorted(receipt_statuses(engine, tenant)) == sorted(
        (event, "processed") for event in started
    )
    assert queue_depth(settings.broker.url, tenant["queue_name"]) == len(events) - len(started)
