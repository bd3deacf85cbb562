"""`fintegrate queues …` against the real broker (and the live API for replay-dlq)."""

from __future__ import annotations

import logging
import threading
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from service.config import Settings
from service.messaging import topology
from service.messaging.consume import WorkerConfig
from service.messaging.consume.consumer import EventConsumer
from service.messaging.messages import EventMessage
from service.messaging.operate.inspection import inspect_tenant
from service.messaging.operate.migration import migrate_tenant
from service.messaging.operate.queue_ops import ready_count
from service.messaging.publish.relay import OutboxRelay
from tests.support.cli import RunCli, json_of
from tests.support.names import unique_name
from tests.support.outbox import amqp_channel, queue_depth, wait_until


def test_provision_dry_run_then_provision_then_status(
    run_cli: RunCli, service_env: Settings
) -> None:
    name = unique_name("q")
    plan = json_of(run_cli("queues", "provision", name, "--dry-run", "--json"))
    assert plan[0]["ok"] is False and plan[0]["queue_exists"] is False
    assert ready_count(service_env.broker, topology.queue_name(name)) is None  # nothing declared
    done = json_of(run_cli("queues", "provision", name, "--json"))
    assert done[0]["result"] == "provisioned"
    assert done[0]["bindings"] == topology.queue_bindings(name)
    again = json_of(run_cli("queues", "provision", name, "--dry-run", "--json"))
    assert again[0]["ok"] is True
    [status] = json_of(run_cli("--json", "queues", "status", name))
    assert status == {
        "consumer_name": name,
        "queue": topology.queue_name(name),
        "exists": True,
        "ready": 0,
        "unacked": 0,
        "consumers": 0,
        "dlq_ready": 0,
    }


def test_provision_reports_differing_arguments_with_exit_3(
    run_cli: RunCli, service_env: Settings
) -> None:
    drifted, fine = unique_name("q"), unique_name("q")
    with amqp_channel(service_env.broker.url) as channel:
        channel.queue_declare(
            topology.queue_name(drifted), durable=True, arguments={"x-max-length": 10}
        )
    result = run_cli("queues", "provision", drifted, fine)
    assert result.exit_code == 3
    assert "x-max-length is 10, expected 100000" in result.stderr
    assert f"queues provision {drifted} --migrate" in result.stderr
    assert queue_depth(service_env.broker.url, topology.dlq_name(fine)) == 0  # fine was done


def test_purge_asks_first(run_cli: RunCli, service_env: Settings) -> None:
    name = unique_name("q")
    json_of(run_cli("queues", "provision", name, "--json"))
    with amqp_channel(service_env.broker.url) as channel:
        for _ in range(3):
            channel.basic_publish(
                topology.EXCHANGE, topology.routing_key("customer_creation", name), b"{}"
            )
    refused = run_cli("queues", "purge", name)
    assert refused.exit_code == 2 and "--yes" in refused.stderr
    assert wait_until(lambda: queue_depth(service_env.broker.url, topology.queue_name(name)) == 3)
    purged = json_of(run_cli("queues", "purge", name, "--yes", "--json"))
    assert purged == {"queue": topology.queue_name(name), "purged": 3}


def run_worker(settings: Settings, tenant: dict[str, Any], handler: Any, until: Any) -> None:
    stop = threading.Event()
    worker_settings = settings.updated({"api_key": tenant["api_key"]})
    consumer = EventConsumer(
        WorkerConfig.from_settings(worker_settings), tenant["name"], stop, handler
    )
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        assert wait_until(until, timeout=60)
    finally:
        stop.set()
        thread.join(30)


def dead_letter_consumer_created(settings: Settings, engine: Engine, tenant: dict[str, Any]) -> str:
    """Publish the tenant's consumer_created event and let a failing handler dead-letter it."""
    OutboxRelay.from_settings(settings, engine, threading.Event()).drain()
    dlq = topology.dlq_name(tenant["name"])

    def broken(message: EventMessage) -> None:
        raise RuntimeError("not today")

    run_worker(settings, tenant, broken, lambda: queue_depth(settings.broker.url, dlq) == 1)
    return dlq


def test_replay_dlq_moves_dead_letters_back_and_they_are_consumed(
    run_cli: RunCli, api_env: Settings, engine: Engine, tenant: dict[str, Any], live_server: str
) -> None:
    settings = api_env.updated({"api_url": live_server})
    dlq = dead_letter_consumer_created(settings, engine, tenant)
    plan = json_of(run_cli("queues", "replay-dlq", tenant["name"], "--dry-run", "--json"))
    assert plan == {"dlq": dlq, "dead_letters": 1, "would_replay": 1}
    refused = run_cli("queues", "replay-dlq", tenant["name"])
    assert refused.exit_code == 2 and "--yes" in refused.stderr
    moved = json_of(run_cli("queues", "replay-dlq", tenant["name"], "--yes", "--json"))
    assert (moved["replayed"], moved["failed"]) == (1, 0)
    assert queue_depth(settings.broker.url, dlq) == 0
    with amqp_channel(settings.broker.url) as channel:
        method, properties, _ = channel.basic_get(tenant["queue_name"])
        assert method.routing_key == topology.routing_key("consumer_created", tenant["name"])
        assert properties.headers["x-fintegrate-replayed"] is True
        assert properties.headers["x-fintegrate-replay-count"] == 1
        channel.basic_nack(method.delivery_tag, requeue=True)
    seen: list[str] = []
    run_worker(settings, tenant, lambda message: seen.append(message.event_id), lambda: seen)
    with engine.connect() as connection:
        status = connection.execute(
            text("SELECT deliver_status FROM customer_events WHERE event_id = :id"), {"id": seen[0]}
        ).scalar_one()
    assert status == "delivered"


def test_status_without_the_management_api_uses_passive_declares(
    run_cli: RunCli, service_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique_name("q")
    json_of(run_cli("queues", "provision", name, "--json"))
    monkeypatch.delenv("FINTEGRATE_RABBITMQ_MANAGEMENT_URL")
    [status] = json_of(run_cli("queues", "status", name, "--json"))
    assert (status["exists"], status["ready"], status["unacked"], status["dlq_ready"]) == (
        True,
        0,
        None,
        0,
    )
    every = json_of(run_cli("queues", "status", "--json"))  # names from the database
    assert isinstance(every, list)


def test_replay_dlq_leaves_stale_dead_letters_unless_asked(
    run_cli: RunCli, api_env: Settings, engine: Engine, tenant: dict[str, Any], live_server: str
) -> None:
    settings = api_env.updated({"api_url": live_server})
    dlq = dead_letter_consumer_created(settings, engine, tenant)
    with engine.connect() as connection:
        event_id = str(
            connection.execute(
                text("SELECT event_id FROM customer_events WHERE consumer_id = :id"),
                {"id": tenant["consumer_id"]},
            ).scalar_one()
        )
    delivered = httpx.post(  # delivered after all (say, by hand): the dead letter is stale
        f"{live_server}/events/confirm-delivery",
        json={"event_id": event_id, "status": "processed"},
        headers={"X-API-Key": tenant["api_key"]},
    )
    assert delivered.status_code == 200, delivered.text

    left = run_cli("queues", "replay-dlq", tenant["name"], "--yes", "--json")
    assert json_of(left) == {
        "replayed": 0,
        "failed": 0,
        "stale_checked": True,
        "stale_left_in_dlq": 1,
        "stale_event_ids": [event_id],
        "reasons": [],
    }
    assert "1 stale dead letter(s) left in the DLQ" in left.stderr
    assert queue_depth(settings.broker.url, dlq) == 1
    table = run_cli("queues", "replay-dlq", tenant["name"], "--yes")
    assert table.exit_code == 0 and "stale_left_in_dlq" in table.stdout
    anyway = json_of(
        run_cli("queues", "replay-dlq", tenant["name"], "--yes", "--include-stale", "--json")
    )
    assert (anyway["replayed"], anyway["stale_checked"], anyway["stale_left_in_dlq"]) == (
        1,
        False,
        0,
    )
    assert queue_depth(settings.broker.url, dlq) == 0
    assert wait_until(lambda: queue_depth(settings.broker.url, tenant["queue_name"]) == 1)


def test_provision_migrate_moves_a_seed_queue_keeping_its_messages(
    run_cli: RunCli, service_env: Settings
) -> None:
    name = unique_name("q")
    queue = topology.queue_name(name)
    seed = {**topology.queue_arguments(name)}
    del seed["x-overflow"]  # the seed declared no overflow behaviour
    with amqp_channel(service_env.broker.url) as channel:
        channel.exchange_declare(topology.EXCHANGE, topology.EXCHANGE_TYPE, durable=True)
        channel.queue_declare(queue, durable=True, arguments=seed)
        channel.queue_bind(
            queue, topology.EXCHANGE, topology.routing_key("customer_creation", name)
        )
        channel.confirm_delivery()
        for number in range(5):
            key = topology.routing_key("customer_creation", name)
            channel.basic_publish(topology.EXCHANGE, key, b"%d" % number)

    reported = run_cli("queues", "provision", name)
    assert reported.exit_code == 3
    assert "x-overflow is None, expected 'reject-publish'" in reported.stderr

    plan = json_of(
        run_cli("queues", "provision", "--consumer", name, "--migrate", "--dry-run", "--json")
    )
    main = next(row for row in plan if row["queue"] == queue)
    assert main["result"] == "would migrate" and main["ready"] == 5
    assert main["drift"] == [
        {"queue": queue, "argument": "x-overflow", "live": None, "expected": "reject-publish"}
    ]
    assert queue_depth(service_env.broker.url, queue) == 5  # the dry run moved nothing

    refused = run_cli("queues", "provision", name, "--migrate")
    assert refused.exit_code == 2 and "--yes" in refused.stderr

    done = json_of(run_cli("queues", "provision", name, "--migrate", "--yes", "--json"))
    main = next(row for row in done if row["queue"] == queue)
    assert (main["result"], main["moved"]) == ("migrated", 10)  # out to the stash and back
    again = json_of(run_cli("queues", "provision", name, "--dry-run", "--json"))
    assert again[0]["ok"] is True
    with amqp_channel(service_env.broker.url) as channel:
        bodies = [channel.basic_get(queue, auto_ack=True)[2] for _ in range(5)]
    assert bodies == [b"0", b"1", b"2", b"3", b"4"]


def test_a_worker_started_during_a_migration_stands_by_then_consumes_the_new_queue(
    api_env: Settings,
    engine: Engine,
    tenant: dict[str, Any],
    live_server: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = api_env.updated({"api_url": live_server})
    OutboxRelay.from_settings(
        settings, engine, threading.Event()
    ).drain()  # its consumer_created event
    assert wait_until(lambda: queue_depth(settings.broker.url, tenant["queue_name"]) == 1)
    tuned = settings.updated({"queue_max_length": 99_999})  # the queue now differs
    caplog.set_level(logging.INFO, logger="service.messaging.consume.consumer")
    seen: list[str] = []
    stop = threading.Event()
    worker = EventConsumer(
        WorkerConfig.from_settings(tuned.updated({"api_key": tenant["api_key"]})),
        tenant["name"],
        stop,
        lambda message: seen.append(message.event_id),
    )
    thread = threading.Thread(target=worker.run, daemon=True)

    def start_worker_while_the_old_queue_is_held(queue: str, _moved: int) -> None:
        if queue == tenant["queue_name"] and not thread.is_alive():
            thread.start()
            assert wait_until(lambda: "standing by" in caplog.text, timeout=30)

    try:
        plans = migrate_tenant(tuned, tenant["name"], start_worker_while_the_old_queue_is_held)
        assert thread.is_alive()
        assert wait_until(lambda: len(seen) == 1, timeout=60)  # from the new queue
    finally:
        stop.set()
        thread.join(30)
    assert plans[1].result == "migrated" and seen[0]
    assert inspect_tenant(tuned, tenant["name"]).ok
