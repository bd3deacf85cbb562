"""A three-node RabbitMQ cluster (scripts/rabbitmq_cluster.sh) with quorum tenant queues.

Every process gets the three nodes in FINTEGRATE_RABBITMQ_URL. Proven here: tenant queues
and DLQs are quorum queues with a member on each node; the tenant's own broker login works
on every node; ``doctor`` reports each node, the membership and quorum queues short of
members; and during a ~40 s load the node the relay is connected to, then another node, are
killed -9 and restarted while nothing is lost, every customer's events reach the handler
once and in order, the relay never exits, publishing never pauses for more than 20 s, and
the killed nodes rejoin. The cluster runs on its own loopback ports: the system broker is
never touched, so these tests are ``slow`` but not ``disruptive``.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pika
import pytest
from sqlalchemy import Engine, text

from service.config import Settings
from service.consumers.broker import tenant_broker_url
from service.messaging import topology
from service.messaging.connection import connection_parameters, split_urls
from tests.reliability.handlers import LOG_ENV, handler_lines
from tests.reliability.load import CustomerLives
from tests.reliability.probes import publish_states, report_figures
from tests.support.outbox import declared_queue, wait_until
from tests.support.processes import FINTEGRATE, FintegrateProcess, process_environment
from tests.support.rabbit_cluster import (
    NODES,
    RabbitCluster,
    amqp_port,
    broker_node_of,
    node_name,
)

# Bounds cover starting the cluster (first test of a run) and waiting for the other
# worker's cluster test to finish its turn.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

LOAD_SECONDS = 40.0
LOAD_LIMIT_SECONDS = 300.0
MAX_PUBLISH_GAP_SECONDS = 20.0
STATUSES = ("inactive", "active", "suspended", "active")
RELAY = ["relay", "--poll-seconds", "0.2"]
HANDLER = "tests.reliability.handlers:record_sequence"


@pytest.fixture(scope="session")
def rabbit_cluster() -> Iterator[RabbitCluster]:
    cluster = RabbitCluster.ensure()
    yield cluster
    cluster.stop()


@pytest.fixture
def stack_settings(
    isolated_settings: Settings, rabbit_cluster: RabbitCluster
) -> Iterator[Settings]:
    """The stack on a vhost of its own on the cluster, quorum tenant queues."""
    with rabbit_cluster.turn(), rabbit_cluster.vhost() as vhost:
        assert rabbit_cluster.wait_all_running(), "the cluster is not whole before the test"
        yield isolated_settings.updated(
            {
                "rabbitmq_url": rabbit_cluster.amqp_urls(vhost),
                "rabbitmq_management_url": rabbit_cluster.management_urls(),
                "queue_type": "quorum",
                "relay_batch_size": 50,
                "relay_max_backoff_seconds": 2.0,
                "rate_limit_api_key_per_minute": 100_000,
                "rate_limit_api_key_burst": 100_000,
            }
        )


def tenant_login_works_on(url: str, queue: str) -> bool:
    """The tenant's login opens a connection on this node and may read its queue."""
    connection = pika.BlockingConnection(connection_parameters(url))
    try:
        channel = connection.channel()
        channel.basic_get(queue, auto_ack=False)  # read permission on its own queue
        return True
    finally:
        connection.close()


def doctor_checks(settings: Settings) -> dict[str, dict[str, Any]]:
    """``fintegrate doctor --json`` run as a process on ``settings``: its checks by name."""
    doctor = subprocess.run(
        [FINTEGRATE, "doctor", "--json"],
        env=process_environment(settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert doctor.returncode in (0, 1, 3), doctor.stderr  # a report, whatever it found
    return {check["name"]: check for check in json.loads(doctor.stdout)}


def test_quorum_queues_span_the_nodes_and_tenant_logins_work_on_each(
    stack_settings: Settings,
    tenant: dict[str, Any],
    rabbit_cluster: RabbitCluster,
) -> None:
    everyone = {node_name(n) for n in NODES}
    queue = declared_queue(stack_settings, tenant["queue_name"])
    dlq = declared_queue(stack_settings, topology.dlq_name(tenant["name"]))
    assert queue["type"] == dlq["type"] == "quorum"
    assert set(queue["members"]) == set(dlq["members"]) == everyone

    assert tenant["broker_provisioned"] is True
    broker = tenant["broker"]
    logins = split_urls(
        tenant_broker_url(stack_settings.broker.url, broker["username"], broker["password"])
    )
    assert [urlsplit(url).port for url in logins] == [amqp_port(n) for n in NODES]
    assert all(tenant_login_works_on(url, tenant["queue_name"]) for url in logins)

    healthy = doctor_checks(stack_settings)
    node_checks = {n: c for n, c in healthy.items() if n.startswith("rabbitmq node")}
    assert len(node_checks) == 3 and {c["status"] for c in node_checks.values()} == {"ok"}
    assert healthy["rabbitmq cluster"]["status"] == "ok"
    assert all(name in healthy["rabbitmq cluster"]["detail"] for name in everyone)
    assert healthy["quorum queues"]["status"] == "ok"

    rabbit_cluster.kill(3)
    try:
        assert wait_until(lambda: node_name(3) not in rabbit_cluster.running_members(), 60)
        assert wait_until(
            lambda: len(declared_queue(stack_settings, queue["name"])["online"]) == 2, 60
        )
        degraded: dict[str, Any] = {}

        def doctor_sees_the_loss() -> bool:
            # The management API's queue listing refreshes its statistics every few seconds,
            # later than the single queue's answer above.
            degraded.update(doctor_checks(stack_settings))
            return bool(degraded["quorum queues"]["status"] == "warn")

        assert wait_until(doctor_sees_the_loss, 60), degraded
    finally:
        rabbit_cluster.restart(3)
    down = [c for n, c in degraded.items() if n.startswith("rabbitmq node") and "5793" in n]
    assert down and down[0]["status"] == "warn"
    assert degraded["rabbitmq cluster"]["status"] == "warn"
    assert f"{node_name(3)} down" in degraded["rabbitmq cluster"]["detail"]
    assert degraded["quorum queues"]["status"] == "warn"
    assert "2/3" in degraded["quorum queues"]["detail"]
    assert rabbit_cluster.wait_all_running()


def longest_publish_gap(engine: Engine, consumer_id: str) -> float:
    """Seconds of the longest wait in which an event was pending and nothing got published."""
    with engine.connect() as connection:
        gap = connection.execute(
            text(
                "SELECT coalesce(max(extract(epoch FROM published_at"
                "  - greatest(previous, created_at))), 0) FROM ("
                "  SELECT published_at, created_at,"
                "    lag(published_at) OVER (ORDER BY published_at) AS previous"
                "  FROM customer_events WHERE consumer_id = :c AND published_at IS NOT NULL"
                ") AS publishes"
            ),
            {"c": consumer_id},
        ).scalar_one()
    return float(gap)


def commit_orders(engine: Engine, consumer_id: str) -> dict[str, list[int]]:
    """Per customer, the sequences of its events."""
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT customer_id, sequence FROM customer_events"
                " WHERE consumer_id = :c AND customer_id IS NOT NULL ORDER BY customer_id, sequence"
            ),
            {"c": consumer_id},
        ).all()
    orders: dict[str, list[int]] = {}
    for row in rows:
        orders.setdefault(str(row.customer_id), []).append(int(row.sequence))
    return orders


def kill_and_restart(cluster: RabbitCluster, node: int) -> threading.Thread:
    """kill -9 ``node`` now and start it again a few seconds later, in the background."""
    cluster.kill(node)

    def restart() -> None:
        time.sleep(3)
        cluster.restart(node)

    thread = threading.Thread(target=restart, daemon=True)
    thread.start()
    return thread


def relay_node(relay: FintegrateProcess) -> int:
    """The one node the relay is connected to (waits for it to hold a connection)."""
    assert relay.process is not None
    pid = relay.process.pid
    assert wait_until(lambda: len(broker_node_of(pid)) == 1, 60), broker_node_of(pid)
    return broker_node_of(pid).pop()


def test_killing_the_relays_node_then_another_loses_nothing(
    stack_settings: Settings,
    stack_engine: Engine,
    api_url: str,
    tenant: dict[str, Any],
    rabbit_cluster: RabbitCluster,
    tmp_path: Path,
) -> None:
    handler_log = tmp_path / "handled.log"
    relay = FintegrateProcess("relay", RELAY, stack_settings, tmp_path).start()
    worker_settings = stack_settings.updated({"api_key": tenant["api_key"], "api_url": api_url})
    worker = FintegrateProcess(
        "worker",
        ["consume", "--consumer", tenant["name"], "--handler", HANDLER],
        worker_settings,
        tmp_path,
        {LOG_ENV: str(handler_log)},
    ).start()
    victims: list[int] = []
    try:
        started = time.monotonic()
        with CustomerLives(api_url, tenant["api_key"], STATUSES) as load:
            time.sleep(8)
            victims.append(relay_node(relay))
            kill_and_restart(rabbit_cluster, victims[0]).join(LOAD_LIMIT_SECONDS)
            assert rabbit_cluster.wait_all_running(), "the first killed node did not rejoin"
            current = relay_node(relay)
            victims.append(current if current != victims[0] else victims[0] % 3 + 1)
            kill_and_restart(rabbit_cluster, victims[1]).join(LOAD_LIMIT_SECONDS)
            assert rabbit_cluster.wait_all_running(), "the second killed node did not rejoin"
            time.sleep(max(0.0, LOAD_SECONDS - (time.monotonic() - started)))
        load_seconds = time.monotonic() - started
        assert relay.alive, relay.log_text()[-3000:]

        events = sum(publish_states(stack_engine, tenant["consumer_id"]).values())
        assert wait_until(
            lambda: publish_states(stack_engine, tenant["consumer_id"]) == {"published": events},
            120,
        ), publish_states(stack_engine, tenant["consumer_id"])
        assert wait_until(
            lambda: len({line.split()[0] for line in handler_lines(handler_log)}) >= events, 180
        ), worker.log_text()[-3000:]
        time.sleep(2)  # a late duplicate would show up in the handler log now
    finally:
        relay_code = relay.terminate()
        worker.terminate()

    handled = [line.split() for line in handler_lines(handler_log)]
    orders = commit_orders(stack_engine, tenant["consumer_id"])
    seen: dict[str, list[int]] = {}
    for _, customer_id, sequence in handled:
        if customer_id != "-":
            seen.setdefault(customer_id, []).append(int(sequence))
    gap = longest_publish_gap(stack_engine, tenant["consumer_id"])

    assert load.failures() == {}, load.bad_bodies
    assert len(victims) == 2 and victims[0] != victims[1]
    assert relay_code == 0, relay.log_text()[-3000:]
    assert len(handled) == events  # every committed event reached the handler once
    assert len({event_id for event_id, _, _ in handled}) == events
    assert seen == orders  # each customer's events, all of them, in commit order
    assert gap <= MAX_PUBLISH_GAP_SECONDS, gap
    queue = declared_queue(stack_settings, tenant["queue_name"])
    assert wait_until(
        lambda: len(declared_queue(stack_settings, tenant["queue_name"]).get("online") or []) == 3,
        120,
    ), queue
    report_figures(
        "rabbitmq cluster, relay's node and another killed",
        events=events,
        customers=len(orders),
        load_seconds=round(load_seconds, 1),
        killed_nodes=victims,
        longest_publish_gap_seconds=round(gap, 1),
    )
