"""Migrating live tenant queues to their expected arguments or type, on the real broker:
every message kept, in order, dead letters too; a dry run changes nothing; a stopped run
is continued by running it again; a consumer on the queue blocks it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import pika
import pika.exceptions
import pytest

from service.config import Settings
from service.messaging import topology
from service.messaging.operate import migration
from service.messaging.operate.inspection import inspect_tenant
from service.messaging.operate.migration import MigrationBlocked, migrate_tenant
from service.messaging.operate.migration_plan import plan_migration
from service.messaging.operate.provisioning import (
    TopologyMismatch,
    provision_consumer_queues,
    provision_many,
)
from tests.support.outbox import (
    amqp_channel,
    drain_queue,
    live_queue,
    new_consumer_name,
    queue_depth,
)

CUSTOMERS = ("cust_a", "cust_b", "cust_c")


def declare_seed_queues(settings: Settings, name: str) -> None:
    """The tenant's queues as the seed declared them: no x-overflow, an unbounded DLQ."""
    with amqp_channel(settings.broker.url) as channel:
        channel.exchange_declare(topology.EXCHANGE, topology.EXCHANGE_TYPE, durable=True)
        channel.queue_declare(
            topology.queue_name(name),
            durable=True,
            arguments={
                "x-dead-letter-exchange": topology.EXCHANGE,
                "x-dead-letter-routing-key": topology.dlq_routing_key(name),
                "x-message-ttl": 86_400_000,
                "x-max-length": 100_000,
            },
        )
        channel.queue_declare(topology.dlq_name(name), durable=True)
        channel.queue_bind(
            topology.dlq_name(name), topology.EXCHANGE, topology.dlq_routing_key(name)
        )
        for key in topology.queue_bindings(name):
            channel.queue_bind(topology.queue_name(name), topology.EXCHANGE, key)


def publish_events(settings: Settings, name: str, first: int, count: int) -> list[bytes]:
    """``count`` events spread over several customers, each with its sequence; the bodies."""
    bodies = []
    with amqp_channel(settings.broker.url) as channel:
        channel.confirm_delivery()
        for number in range(first, first + count):
            customer = CUSTOMERS[number % len(CUSTOMERS)]
            body = json.dumps({"customer": customer, "n": number}).encode()
            properties = pika.BasicProperties(
                message_id=f"e{number}",
                delivery_mode=2,
                headers={"x-fintegrate-sequence": number // len(CUSTOMERS) + 1},
            )
            key = topology.routing_key("customer_status_change", name)
            channel.basic_publish(topology.EXCHANGE, key, body, properties, mandatory=True)
            bodies.append(body)
    return bodies


def dead_letter(settings: Settings, name: str, count: int) -> list[bytes]:
    """Publish ``count`` events and reject them into the DLQ; their bodies."""
    bodies = publish_events(settings, name, 1000, count)
    with amqp_channel(settings.broker.url) as channel:
        for _ in bodies:
            method, _, _ = channel.basic_get(topology.queue_name(name))
            channel.basic_reject(method.delivery_tag, requeue=False)
    return bodies


def bodies_of(settings: Settings, queue: str) -> list[bytes]:
    return [body for _, _, body in drain_queue(settings.broker.url, queue)]


def temporary_queues(settings: Settings, name: str) -> list[str]:
    queues = [topology.queue_name(name), topology.dlq_name(name)]
    candidates = [
        temporary
        for queue in queues
        for temporary in (
            topology.migration_stash_name(queue),
            topology.migration_inbox_name(queue),
        )
    ]
    return [queue for queue in candidates if live_queue(settings, queue) is not None]


def test_migration_keeps_every_message_in_order_and_ends_as_expected(settings: Settings) -> None:
    name = new_consumer_name()
    declare_seed_queues(settings, name)
    dead = dead_letter(settings, name, 4)
    sent = publish_events(settings, name, 0, 450)  # more than one move batch
    progress: list[tuple[str, int]] = []

    plans = migrate_tenant(settings, name, lambda queue, moved: progress.append((queue, moved)))

    assert [plan.result for plan in plans] == ["migrated", "migrated"]
    assert inspect_tenant(settings, name).ok  # arguments and bindings as expected
    assert temporary_queues(settings, name) == []
    assert progress[-1] == (topology.queue_name(name), 2 * len(sent))  # out and back
    assert bodies_of(settings, topology.dlq_name(name)) == dead
    assert bodies_of(settings, topology.queue_name(name)) == sent
    # the queue routes again: a new event lands after the moved ones
    publish_events(settings, name, 9000, 1)
    assert queue_depth(settings.broker.url, topology.queue_name(name)) == 1


def publish_like_the_relay(settings: Settings, name: str, count: int, done: list[bytes]) -> None:
    """Publish ``count`` events in order; an unroutable one is retried before the next, as
    the relay holds back an aggregate's later events behind a failed one."""
    with amqp_channel(settings.broker.url) as channel:
        channel.confirm_delivery()
        key = topology.routing_key("customer_creation", name)
        for number in range(count):
            body = b"live-%d" % number
            for _ in range(2000):  # bounded: a migration's unroutable window is short
                try:
                    channel.basic_publish(topology.EXCHANGE, key, body, mandatory=True)
                except pika.exceptions.UnroutableError:
                    time.sleep(0.01)
                    continue
                done.append(body)
                time.sleep(0.01)  # spread over the whole migration
                break


def test_events_published_during_the_migration_arrive_after_the_old_ones(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(migration, "MOVE_BATCH", 10)
    name = new_consumer_name()
    declare_seed_queues(settings, name)
    sent = publish_events(settings, name, 0, 60)
    live: list[bytes] = []
    publisher = threading.Thread(target=publish_like_the_relay, args=(settings, name, 150, live))

    publisher.start()
    migrate_tenant(settings, name)
    publisher.join(120)

    assert not publisher.is_alive() and len(live) == 150
    assert inspect_tenant(settings, name).ok
    assert bodies_of(settings, topology.queue_name(name)) == sent + live


def test_moved_messages_keep_their_properties(settings: Settings) -> None:
    name = new_consumer_name()
    declare_seed_queues(settings, name)
    publish_events(settings, name, 0, 3)

    migrate_tenant(settings, name)

    [_, properties, _] = drain_queue(settings.broker.url, topology.queue_name(name))[1]
    assert properties.message_id == "e1"
    assert properties.delivery_mode == 2
    assert properties.headers["x-fintegrate-sequence"] == 1


def test_a_redelivered_message_is_moved_marked_as_a_possible_copy(settings: Settings) -> None:
    name = new_consumer_name()
    declare_seed_queues(settings, name)
    publish_events(settings, name, 0, 2)
    with amqp_channel(settings.broker.url) as channel:
        assert channel.basic_get(topology.queue_name(name))[0] is not None  # unacked: requeued

    migrate_tenant(settings, name)

    first, second = drain_queue(settings.broker.url, topology.queue_name(name))
    assert first[1].headers["x-fintegrate-possible-duplicate"] is True
    assert "x-fintegrate-possible-duplicate" not in second[1].headers


def test_migration_to_quorum_queues_keeps_every_message(settings: Settings) -> None:
    name = new_consumer_name()
    declare_seed_queues(settings, name)
    dead = dead_letter(settings, name, 2)
    sent = publish_events(settings, name, 0, 40)
    quorum = settings.updated({"queue_type": "quorum"})

    migrate_tenant(quorum, name)

    for queue in (topology.queue_name(name), topology.dlq_name(name)):
        live = live_queue(quorum, queue)
        assert live is not None and live["type"] == "quorum", queue
    assert inspect_tenant(quorum, name).ok
    assert bodies_of(quorum, topology.dlq_name(name)) == dead
    assert bodies_of(quorum, topology.queue_name(name)) == sent


def test_an_up_to_date_tenant_is_left_alone(settings: Settings) -> None:
    name = new_consumer_name()
    provision_consumer_queues(settings, name)
    sent = publish_events(settings, name, 0, 5)

    plans = migrate_tenant(settings, name)

    assert [(plan.result, plan.moved) for plan in plans] == [("up to date", 0), ("up to date", 0)]
    assert bodies_of(settings, topology.queue_name(name)) == sent


def test_planning_changes_nothing(settings: Settings) -> None:
    name = new_consumer_name()
    declare_seed_queues(settings, name)
    publish_events(settings, name, 0, 7)
    before = live_queue(settings, topology.queue_name(name))

    dlq_plan, queue_plan = plan_migration(settings, name)

    assert queue_plan.needed and queue_plan.ready == 7
    assert [item.argument for item in queue_plan.drift] == ["x-overflow"]
    assert any("move 7 message(s)" in step for step in queue_plan.steps())
    assert {item.argument for item in dlq_plan.drift} == {"x-max-length", "x-overflow"}
    after = live_queue(settings, topology.queue_name(name))
    assert before is not None and after is not None
    assert after["arguments"] == before["arguments"]
    assert queue_depth(settings.broker.url, topology.queue_name(name)) == 7
    assert temporary_queues(settings, name) == []


class Interrupted(Exception):
    """Raised from the progress callback: the run stops as if killed between batches."""


def interrupt_after(calls: int) -> Callable[[str, int], None]:
    seen = {"calls": 0}

    def on_progress(_queue: str, _moved: int) -> None:
        seen["calls"] += 1
        if seen["calls"] == calls:
            raise Interrupted

    return on_progress


@pytest.mark.parametrize(
    "stop_at",
    [
        1,  # the DLQ's move to its stash (3 dead letters: one batch out, one back)
        4,  # the main queue's move to its stash, after two of its five batches
        9,  # the main queue's move back from its stash, after two batches
    ],
)
def test_a_stopped_migration_is_continued_by_running_it_again(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, stop_at: int
) -> None:
    monkeypatch.setattr(migration, "MOVE_BATCH", 10)
    name = new_consumer_name()
    declare_seed_queues(settings, name)
    dead = dead_letter(settings, name, 3)
    sent = publish_events(settings, name, 0, 45)

    with pytest.raises(Interrupted):
        migrate_tenant(settings, name, interrupt_after(stop_at))
    left = temporary_queues(settings, name)
    assert left  # half way
    # provisioning now would let new events overtake the moving ones: it refuses and says so
    [refused] = provision_many(settings, [name])
    assert isinstance(refused, TopologyMismatch)
    assert sorted(refused.report.migration_queues) == sorted(left)
    assert f"queues provision {name} --migrate` to finish it" in str(refused)
    later = publish_events(settings, name, 100, 5)  # arrives while it is stopped
    plans = migrate_tenant(settings, name)

    assert plans[1].result == "migrated"
    assert inspect_tenant(settings, name).ok
    assert temporary_queues(settings, name) == []
    assert bodies_of(settings, topology.dlq_name(name)) == dead
    assert bodies_of(settings, topology.queue_name(name)) == sent + later


def test_a_consumer_on_the_queue_blocks_the_migration(settings: Settings) -> None:
    name = new_consumer_name()
    declare_seed_queues(settings, name)
    sent = publish_events(settings, name, 0, 3)
    with amqp_channel(settings.broker.url) as worker:
        worker.basic_qos(prefetch_count=1)
        worker.basic_consume(topology.queue_name(name), lambda *_: None, exclusive=True)
        with pytest.raises(MigrationBlocked, match="stop the tenant's worker"):
            migrate_tenant(settings, name)
    assert temporary_queues(settings, name) == []
    assert bodies_of(settings, topology.queue_name(name)) == sent


def test_more_messages_than_the_new_max_length_refuse_the_migration(settings: Settings) -> None:
    name = new_consumer_name()
    declare_seed_queues(settings, name)
    dead = dead_letter(settings, name, 3)
    sent = publish_events(settings, name, 0, 4)
    tight = settings.updated({"queue_max_length": 10, "dlq_max_length": 2})

    with pytest.raises(MigrationBlocked, match="FINTEGRATE_DLQ_MAX_LENGTH"):
        migrate_tenant(tight, name)  # the DLQ would drop its oldest dead letter
    assert plan_migration(tight, name)[0].steps()[0].startswith("refused: ")

    assert temporary_queues(settings, name) == []
    assert bodies_of(settings, topology.dlq_name(name)) == dead
    assert bodies_of(settings, topology.queue_name(name)) == sent
