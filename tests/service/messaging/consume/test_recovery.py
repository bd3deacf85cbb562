"""Nothing is lost to the queue's TTL or max length, and a slow customer holds back only
itself: the worker fetches what its queue no longer holds from the API, in order.

The tenant's queue is re-provisioned with small bounds through the settings
(``FINTEGRATE_QUEUE_MESSAGE_TTL_MS`` / ``FINTEGRATE_QUEUE_MAX_LENGTH``). Messages are
published straight to the exchange (as the relay would) and their events marked published.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
from sqlalchemy import Engine, text

from service.config import Settings
from service.messaging import topology
from service.messaging.messages import EventMessage
from service.messaging.operate.provisioning import provision_consumer_queues
from tests.support.outbox import amqp_channel, queue_depth, wait_until
from tests.support.worker import (
    Recorder,
    Tenant,
    WorkerThread,
    change_status,
    customers_with_events,
    event_body,
    expected_orders,
    interleaved_rows,
    publish,
    receipts,
    tenant_url,
)

TTL_MS = 1500
MARK_PUBLISHED = text(
    "UPDATE customer_events SET publish_status = 'published', published_at = now() "
    "WHERE event_id = ANY(CAST(:ids AS uuid[]))"
)


def bounded(settings: Settings, **bounds: Any) -> Settings:
    """``settings`` with small queue bounds and a quick recovery sweep."""
    return settings.updated({"worker_recovery_interval_seconds": 1.0, **bounds})


def reprovision(settings: Settings, tenant: Tenant) -> None:
    """The tenant's queues declared again with ``settings``' bounds."""
    with amqp_channel(settings.broker.url) as channel:
        channel.queue_delete(tenant["queue_name"])
        channel.queue_delete(topology.dlq_name(tenant["name"]))
    provision_consumer_queues(settings, tenant["name"])


def declare_legacy_queue(settings: Settings, tenant: Tenant) -> None:
    """The tenant queue as queues were declared before ``x-overflow: reject-publish``: full,
    it drops its oldest message into the DLQ (a queue not yet moved by ``--migrate``)."""
    arguments = dict(topology.expected_topology(settings.queues, tenant["name"]).queue_arguments)
    del arguments["x-overflow"]
    with amqp_channel(settings.broker.url) as channel:
        channel.queue_delete(tenant["queue_name"])
        channel.queue_declare(tenant["queue_name"], durable=True, arguments=arguments)
        for key in topology.queue_bindings(tenant["name"]):
            channel.queue_bind(tenant["queue_name"], topology.EXCHANGE, key)


def publish_as_relay(settings: Settings, engine: Engine, rows: list[Any]) -> None:
    publish(settings, rows)
    with engine.begin() as connection:
        connection.execute(MARK_PUBLISHED, {"ids": [str(row.event_id) for row in rows]})


def dlq_depth(settings: Settings, tenant: Tenant) -> int:
    return queue_depth(settings.broker.url, topology.dlq_name(tenant["name"]))


def handled_once_in_order(handler: Recorder, rows: list[Any]) -> None:
    assert sorted(event for _, _, event in handler.calls) == sorted(str(r.event_id) for r in rows)
    assert handler.sequences() == expected_orders(rows)
    assert handler.overlaps == 0


def delivered_all(engine: Engine, tenant: Tenant, count: int) -> bool:
    return len({event for event, status, _ in receipts(engine, tenant) if status != "failed"}) >= (
        count
    )


def test_a_gap_is_filled_from_the_api_before_the_later_event(
    settings: Settings, engine: Engine, api: httpx.Client, tenant: Tenant, live_server: str
) -> None:
    customers_with_events(api, tenant, customers=3, events=4)
    rows = interleaved_rows(engine, tenant)
    publish_as_relay(settings, engine, [row for row in rows if row.sequence in (1, 4)])
    handler = Recorder()
    with WorkerThread(bounded(settings), tenant, live_server, handler, prefetch=20) as worker:
        assert wait_until(lambda: delivered_all(engine, tenant, 12), timeout=60)
    handled_once_in_order(handler, rows)
    assert worker.consumer.stats.recovered == 6  # sequences 2 and 3 of each customer


def test_a_worker_away_past_the_ttl_gets_every_event_once_in_order_and_the_dlq_empties(
    settings: Settings, engine: Engine, api: httpx.Client, tenant: Tenant, live_server: str
) -> None:
    """The worker uses the tenant's own read-only broker login: the DLQ sweep needs no more."""
    small = bounded(settings, queue_message_ttl_ms=TTL_MS)
    reprovision(small, tenant)
    customers = customers_with_events(api, tenant, customers=10, events=3)
    expired = interleaved_rows(engine, tenant)
    publish_as_relay(settings, engine, expired)
    assert wait_until(lambda: dlq_depth(settings, tenant) == 30, timeout=30)  # all expired
    assert queue_depth(settings.broker.url, tenant["queue_name"]) == 0
    for customer_id in customers[:5]:  # half the customers change again: sequence 4
        change_status(api, tenant, customer_id, "suspended")
    fresh = [row for row in interleaved_rows(engine, tenant) if row.sequence == 4]
    publish_as_relay(settings, engine, fresh)

    handler = Recorder()
    own_login = small.updated({"rabbitmq_url": tenant_url(tenant["broker"])})
    with WorkerThread(own_login, tenant, live_server, handler, prefetch=20) as worker:
        assert wait_until(lambda: delivered_all(engine, tenant, 35), timeout=90)
        assert wait_until(lambda: dlq_depth(settings, tenant) == 0, timeout=30)
    handled_once_in_order(handler, expired + fresh)
    assert worker.consumer.stats.lost_letters == 30
    assert queue_depth(settings.broker.url, tenant["queue_name"]) == 0


def test_events_older_than_the_ttl_come_back_even_without_their_dead_letters(
    settings: Settings, engine: Engine, api: httpx.Client, tenant: Tenant, live_server: str
) -> None:
    small = bounded(settings, queue_message_ttl_ms=TTL_MS)
    reprovision(small, tenant)
    customers_with_events(api, tenant, customers=6, events=2)
    rows = interleaved_rows(engine, tenant)
    publish_as_relay(settings, engine, rows)
    assert wait_until(lambda: dlq_depth(settings, tenant) == 12, timeout=30)
    with amqp_channel(settings.broker.url) as channel:  # a bounded DLQ dropped them
        channel.queue_purge(topology.dlq_name(tenant["name"]))
    time.sleep(2.5)  # past the TTL and its margin since they were published

    handler = Recorder()
    with WorkerThread(small, tenant, live_server, handler, prefetch=20) as worker:
        assert wait_until(lambda: delivered_all(engine, tenant, 12), timeout=90)
    handled_once_in_order(handler, rows)
    assert worker.consumer.stats.recovered == 12


def test_a_backlog_past_the_max_length_is_delivered_once_in_order(
    settings: Settings, engine: Engine, api: httpx.Client, tenant: Tenant, live_server: str
) -> None:
    small = bounded(settings, queue_max_length=5)
    reprovision(small, tenant)
    declare_legacy_queue(small, tenant)
    customers_with_events(api, tenant, customers=10, events=3)
    rows = interleaved_rows(engine, tenant)
    publish_as_relay(settings, engine, rows)
    assert queue_depth(settings.broker.url, tenant["queue_name"]) == 5
    assert wait_until(lambda: dlq_depth(settings, tenant) == 25, timeout=30)

    handler = Recorder()
    with WorkerThread(small, tenant, live_server, handler, prefetch=20):
        assert wait_until(lambda: delivered_all(engine, tenant, 30), timeout=90)
        assert wait_until(lambda: dlq_depth(settings, tenant) == 0, timeout=30)
    handled_once_in_order(handler, rows)


def test_a_cold_worker_never_handles_an_older_copy_after_a_newer_event(
    settings: Settings, engine: Engine, api: httpx.Client, tenant: Tenant, live_server: str
) -> None:
    customers = customers_with_events(api, tenant, customers=4, events=3)
    rows = interleaved_rows(engine, tenant)
    publish_as_relay(settings, engine, rows)
    with WorkerThread(bounded(settings), tenant, live_server, Recorder(), prefetch=20):
        assert wait_until(lambda: delivered_all(engine, tenant, 12), timeout=60)
    for customer_id in customers:
        change_status(api, tenant, customer_id, "suspended")  # sequence 4
    fresh = [row for row in interleaved_rows(engine, tenant) if row.sequence == 4]
    # unmarked copies of sequence 2 (no possible-duplicate header, not redelivered), then 4
    publish(settings, [row for row in rows if row.sequence == 2] + fresh)

    handler = Recorder()
    with WorkerThread(bounded(settings), tenant, live_server, handler, prefetch=20) as cold:
        assert wait_until(lambda: delivered_all(engine, tenant, 16), timeout=60)
        assert wait_until(lambda: cold.consumer.stats.stale == 4), cold.consumer.stats
    assert sorted(event for _, _, event in handler.calls) == sorted(str(r.event_id) for r in fresh)
    assert cold.consumer.sequences.look_ups >= 1


class SlowCustomer:
    """Records every call; one customer's handler takes ``seconds`` per event."""

    def __init__(self, slow_customer: str, seconds: float):
        self.slow_customer = slow_customer
        self.seconds = seconds
        self.recorder = Recorder(max_seconds=0.0)
        self.slow_done = 0
        self.slow_done_when_fast_finished: int | None = None
        self.fast_expected = 0
        self._lock = threading.Lock()

    def __call__(self, message: EventMessage) -> None:
        if message.customer_id == self.slow_customer:
            time.sleep(self.seconds)
        self.recorder(message)
        with self._lock:
            if message.customer_id == self.slow_customer:
                self.slow_done += 1
            elif self.fast_count() == self.fast_expected:
                self.slow_done_when_fast_finished = self.slow_done

    def fast_count(self) -> int:
        return sum(1 for c, _, _ in self.recorder.calls if c != self.slow_customer)


def test_a_slow_customer_holds_back_only_itself(
    settings: Settings, engine: Engine, api: httpx.Client, tenant: Tenant, live_server: str
) -> None:
    [slow] = customers_with_events(api, tenant, customers=1, events=16)
    fast = customers_with_events(api, tenant, customers=20, events=1)
    rows = interleaved_rows(engine, tenant)
    by_customer = sorted(rows, key=lambda r: (str(r.customer_id) != slow, r.sequence))
    handler = SlowCustomer(slow, seconds=1.5)
    handler.fast_expected = len(fast)
    publish_as_relay(settings, engine, by_customer)  # the slow customer's 16 first

    capped = bounded(settings, worker_max_in_hand_per_customer=2)
    with WorkerThread(capped, tenant, live_server, handler, prefetch=10, concurrency=4):
        assert wait_until(lambda: handler.fast_count() == len(fast), timeout=60)
        # without the cap the slow customer holds all 10 prefetched messages, and the fast
        # ones start only as its events finish one by one (7 of them before the last fast)
        assert handler.slow_done_when_fast_finished is not None
        assert handler.slow_done_when_fast_finished <= 3
        assert wait_until(lambda: delivered_all(engine, tenant, 36), timeout=120)
    handled_once_in_order(handler.recorder, rows)


def test_a_bogus_customer_or_sequence_cannot_stop_the_recovery(
    settings: Settings, engine: Engine, api: httpx.Client, tenant: Tenant, live_server: str
) -> None:
    key = topology.routing_key("customer_creation", tenant["name"])
    with amqp_channel(settings.broker.url) as channel:
        for changes in ({"customer_id": "not-a-uuid", "sequence": 7}, {"sequence": 2**63}):
            channel.basic_publish(topology.EXCHANGE, key, event_body(**changes))
    customers_with_events(api, tenant, customers=2, events=2)
    rows = interleaved_rows(engine, tenant)
    publish_as_relay(settings, engine, rows)
    handler = Recorder()
    with WorkerThread(bounded(settings), tenant, live_server, handler, prefetch=20) as worker:
        assert wait_until(lambda: delivered_all(engine, tenant, 4), timeout=60)
        assert wait_until(lambda: dlq_depth(settings, tenant) == 2)  # refused receipts
        assert worker.thread.is_alive()
    assert worker.consumer.stats.refused == 2
    real = {c: s for c, s in handler.sequences().items() if c in expected_orders(rows)}
    assert real == expected_orders(rows)
