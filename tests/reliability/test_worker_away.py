"""A ``fintegrate consume`` process stopped longer than the queue's TTL: when it comes back
every event reaches the handler once, each customer's in order, and the DLQ empties.

The tenant's queue is provisioned with a 1.5 s TTL through ``FINTEGRATE_QUEUE_MESSAGE_TTL_MS``;
the relay publishes while the worker is away, RabbitMQ dead-letters everything it held
(``expired``), and only some customers have a newer event in the queue when it returns.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from service.config import Settings
from service.messaging import topology
from service.messaging.operate.provisioning import provision_consumer_queues
from service.messaging.publish.relay import OutboxRelay
from tests.reliability.handlers import LOG_ENV, handler_lines
from tests.reliability.probes import deliver_states, report_figures
from tests.support.api import create_tenant_over_http
from tests.support.outbox import amqp_channel, queue_depth, wait_until
from tests.support.processes import FintegrateProcess
from tests.support.worker import change_status, create_customers

pytestmark = pytest.mark.slow
TTL_MS = 1500
WORKER_STARTED = "consuming customer_notification_"
AGGREGATE_ORDER = text(
    "SELECT event_id, coalesce(customer_id, consumer_id) AS aggregate_id, sequence "
    "FROM customer_events WHERE consumer_id = :consumer_id"
)


def start_worker(settings: Settings, tenant: dict[str, Any], log_dir: Path, name: str) -> Any:
    arguments = ["consume", "--consumer", tenant["name"], "--prefetch", "10"]
    arguments += ["--handler", "tests.reliability.handlers:record"]
    extra = {LOG_ENV: str(log_dir / "handled.log")}
    worker = FintegrateProcess(name, arguments, settings, log_dir, extra).start()
    worker.wait_for_log(WORKER_STARTED)
    return worker


def test_a_worker_stopped_past_the_ttl_gets_every_event_once_in_order(
    settings: Settings, engine: Engine, live_server: str, tmp_path: Path
) -> None:
    tenant = create_tenant_over_http(live_server, settings.auth.admin_api_key, "away")
    small = settings.updated(
        {
            "api_url": live_server,
            "api_key": tenant["api_key"],
            "queue_message_ttl_ms": TTL_MS,
            "worker_recovery_interval_seconds": 1.0,
        }
    )
    dlq = topology.dlq_name(tenant["name"])
    with amqp_channel(settings.broker.url) as channel:
        channel.queue_delete(tenant["queue_name"])
        channel.queue_delete(dlq)
    provision_consumer_queues(small, tenant["name"])
    relay = OutboxRelay.from_settings(settings, engine, threading.Event())
    api = httpx.Client(base_url=live_server, timeout=10)

    customers = create_customers(api, tenant, 4)
    relay.drain()
    worker = start_worker(small, tenant, tmp_path, "worker-first")
    try:
        assert wait_until(lambda: deliver_states(engine, tenant["consumer_id"]) == {"delivered": 5})
    finally:
        assert worker.terminate() == 0, worker.log_text()[-2000:]

    for status in ("suspended", "active"):  # while the worker is away
        for customer_id in customers:
            change_status(api, tenant, customer_id, status)
    customers += create_customers(api, tenant, 2)
    relay.drain()
    assert wait_until(lambda: queue_depth(settings.broker.url, dlq) == 10, timeout=30)
    for customer_id in customers[:2]:  # a newer event queued for some customers only
        change_status(api, tenant, customer_id, "suspended")
    relay.drain()
    assert queue_depth(settings.broker.url, tenant["queue_name"]) == 2

    worker = start_worker(small, tenant, tmp_path, "worker-back")
    try:
        assert wait_until(
            lambda: deliver_states(engine, tenant["consumer_id"]) == {"delivered": 17}, timeout=60
        )
        assert wait_until(lambda: queue_depth(settings.broker.url, dlq) == 0, timeout=30)
    finally:
        assert worker.terminate() == 0, worker.log_text()[-2000:]
    api.close()

    handled = handler_lines(tmp_path / "handled.log")
    assert Counter(handled) == Counter(set(handled)) and len(handled) == 17  # each once
    with engine.connect() as connection:
        rows = connection.execute(AGGREGATE_ORDER, {"consumer_id": tenant["consumer_id"]}).all()
    position = {str(row.event_id): (str(row.aggregate_id), row.sequence) for row in rows}
    seen: dict[str, list[int]] = defaultdict(list)
    for event_id in handled:
        aggregate, sequence = position[event_id]
        seen[aggregate].append(sequence)
    assert all(sequences == sorted(sequences) for sequences in seen.values())
    assert queue_depth(settings.broker.url, tenant["queue_name"]) == 0
    report_figures("worker_away_past_ttl", events=17, expired_letters=10, handled=len(handled))
