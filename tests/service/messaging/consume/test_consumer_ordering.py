"""The worker keeps per-customer order with prefetch > 1 and skips stale duplicates.

Customers and their events are created through the live API (each call after the previous
one answered, so sequence = commit order). Their messages are published straight to the
tenant queue, customers' events interleaved in small groups so that several events of one
customer are in flight together, the situation lanes exist for.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx
from sqlalchemy import Engine

from service.config import Settings
from service.messaging.messages import POSSIBLE_DUPLICATE_HEADER, EventMessage
from tests.support.outbox import amqp_channel, queue_depth, wait_until
from tests.support.tcp_proxy import TcpProxy
from tests.support.worker import (
    Recorder,
    Tenant,
    WorkerThread,
    change_status,
    create_customers,
    customers_with_events,
    expected_orders,
    interleaved_rows,
    publish,
    receipts,
)


def consumer_count(settings: Settings, tenant: Tenant) -> int:
    with amqp_channel(settings.broker.url) as channel:
        declared = channel.queue_declare(tenant["queue_name"], passive=True)
        return int(declared.method.consumer_count)


def processed(engine: Engine, tenant: Tenant) -> set[str]:
    return {event for event, status, _ in receipts(engine, tenant) if status == "processed"}


def test_prefetch_20_keeps_each_customers_order_and_runs_customers_in_parallel(
    settings: Settings, engine: Engine, api: httpx.Client, tenant: Tenant, live_server: str
) -> None:
    customers_with_events(api, tenant, customers=50, events=5)
    rows = interleaved_rows(engine, tenant)
    assert len(rows) == 250
    publish(settings, rows)
    handler = Recorder()
    with WorkerThread(settings, tenant, live_server, handler, prefetch=20) as worker:
        assert wait_until(lambda: len(receipts(engine, tenant)) == 250, timeout=120)
    assert handler.sequences() == expected_orders(rows)
    assert handler.count() == 250 and handler.overlaps == 0
    assert handler.max_parallel > 1  # customers were handled side by side
    assert {status for _, status, _ in receipts(engine, tenant)} == {"processed"}
    stats = worker.consumer.stats
    # past a customer's in-hand cap its messages are acked and its events fetched instead
    assert stats.processed + stats.recovered == 250 and stats.recovered == stats.owed
    assert 0 < worker.consumer.sequences.look_ups <= 50  # once per customer at most, batched
    assert queue_depth(settings.broker.url, tenant["queue_name"]) == 0


def test_a_duplicate_is_skipped_with_a_receipt_and_the_handler_called_once(
    settings: Settings, engine: Engine, api: httpx.Client, tenant: Tenant, live_server: str
) -> None:
    customers_with_events(api, tenant, customers=10, events=3)
    rows = interleaved_rows(engine, tenant)
    publish(settings, rows, copies=2)
    handler = Recorder()
    # every copy reaches a lane (no customer past its in-hand cap), so each gets its receipt
    roomy = settings.updated({"worker_max_in_hand_per_customer": 20})
    with WorkerThread(roomy, tenant, live_server, handler, prefetch=20) as worker:
        assert wait_until(lambda: len(receipts(engine, tenant)) == 60, timeout=60)
        assert wait_until(lambda: worker.consumer.stats.stale == 30)
    assert sorted(event for _, _, event in handler.calls) == sorted(str(r.event_id) for r in rows)
    assert handler.sequences() == expected_orders(rows)
    recorded = receipts(engine, tenant)
    assert sorted((event, status) for event, status, _ in recorded) == sorted(
        (str(row.event_id), status) for row in rows for status in ("processed", "received")
    )
    for _, status, detail in recorded:
        assert status == "processed" or (detail or "").startswith("stale duplicate: sequence")
    assert worker.consumer.stats.processed == 30
    assert queue_depth(settings.broker.url, tenant["queue_name"]) == 0


def test_a_restarted_worker_skips_stale_duplicates_it_never_saw(
    settings: Settings, engine: Engine, api: httpx.Client, tenant: Tenant, live_server: str
) -> None:
    customers = customers_with_events(api, tenant, customers=10, events=3)
    first_rows = interleaved_rows(engine, tenant)
    publish(settings, first_rows)
    with WorkerThread(settings, tenant, live_server, Recorder(), prefetch=20):
        assert wait_until(lambda: len(receipts(engine, tenant)) == 30, timeout=60)
    for customer_id in customers:
        change_status(api, tenant, customer_id, "suspended")  # sequence 4 of each
    known = {row.event_id for row in first_rows}
    fresh = [row for row in interleaved_rows(engine, tenant) if row.event_id not in known]
    # every old event again, as a relay that took over the partition marks them, then the new
    publish(settings, first_rows, headers={POSSIBLE_DUPLICATE_HEADER: True})
    publish(settings, fresh)

    handler = Recorder()
    with WorkerThread(settings, tenant, live_server, handler, prefetch=20) as restarted:
        assert wait_until(lambda: handler.count() == 10, timeout=60)
        assert wait_until(lambda: restarted.consumer.stats.stale == 30)
    assert handler.sequences() == {customer_id: [4] for customer_id in customers}
    assert 1 <= restarted.consumer.sequences.look_ups <= 10  # batched, one per customer at most
    stale = [detail for _, status, detail in receipts(engine, tenant) if status == "received"]
    assert len(stale) == 30
    assert all(detail and "<= last delivered 3; handler not called" in detail for detail in stale)
    assert queue_depth(settings.broker.url, tenant["queue_name"]) == 0


def test_a_first_event_arriving_fresh_costs_no_look_up_one_left_from_before_does(
    settings: Settings, engine: Engine, api: httpx.Client, tenant: Tenant, live_server: str
) -> None:
    customers_with_events(api, tenant, customers=10, events=2)
    rows = interleaved_rows(engine, tenant)
    handler = Recorder()
    with WorkerThread(settings, tenant, live_server, handler, prefetch=20) as worker:
        assert wait_until(lambda: consumer_count(settings, tenant) == 1)
        publish(settings, rows)  # after the worker started: sequence 1 opens each customer
        assert wait_until(lambda: len(receipts(engine, tenant)) == 20, timeout=60)
    assert handler.sequences() == expected_orders(rows)
    assert worker.consumer.sequences.look_ups == 0  # sequence 2 found sequence 1 cached

    # unmarked copies queued before the next worker starts (a late frame of a relay that
    # lost its lease): the new worker's cache does not know them, so it asks
    publish(settings, [row for row in rows if row.sequence == 1])
    again = Recorder()
    with WorkerThread(settings, tenant, live_server, again, prefetch=20) as restarted:
        assert wait_until(lambda: restarted.consumer.stats.stale == 10, timeout=60)
    assert again.count() == 0
    assert restarted.consumer.sequences.look_ups >= 1


def test_other_customers_keep_flowing_while_one_customers_handler_is_slow(
    settings: Settings, engine: Engine, api: httpx.Client, tenant: Tenant, live_server: str
) -> None:
    customers = customers_with_events(api, tenant, customers=20, events=3)
    slow, release = customers[0], threading.Event()
    record = Recorder(max_seconds=0.005)

    def handler(message: EventMessage) -> None:
        if message.customer_id == slow and message.sequence == 1:
            assert release.wait(60)
        record(message)

    publish(settings, interleaved_rows(engine, tenant))
    with WorkerThread(settings, tenant, live_server, handler, prefetch=20):
        assert wait_until(lambda: record.count() == 57, timeout=60)  # all but the slow one's
        assert slow not in record.sequences()
        release.set()
        assert wait_until(lambda: record.count() == 60, timeout=60)
    assert record.sequences()[slow] == [1, 2, 3]


def test_a_lost_broker_connection_keeps_order_and_calls_each_handler_once(
    settings: Settings,
    engine: Engine,
    api: httpx.Client,
    tenant: Tenant,
    live_server: str,
    tcp_proxy_factory: Callable[[str, int], TcpProxy],
) -> None:
    customers_with_events(api, tenant, customers=12, events=5)
    rows = interleaved_rows(engine, tenant, group=4)
    publish(settings, rows)
    proxy = tcp_proxy_factory("127.0.0.1", 5672)
    proxied = settings.updated({"rabbitmq_url": proxy.url_for(settings.broker.url)})
    handler = Recorder(max_seconds=0.05)
    with WorkerThread(proxied, tenant, live_server, handler, prefetch=20):
        for cut_after in (10, 25, 40):
            assert wait_until(lambda n=cut_after: handler.count() >= n, timeout=60)
            proxy.close_all()  # in-flight lanes finish; their acks are lost, queued ones dropped
        assert wait_until(lambda: len(processed(engine, tenant)) == 60, timeout=90)
        assert wait_until(lambda: queue_depth(settings.broker.url, tenant["queue_name"]) == 0)
    assert handler.sequences() == expected_orders(rows)
    assert handler.count() == 60  # redelivered ones already recorded were skipped as stale
    assert {status for _, status, _ in receipts(engine, tenant)} <= {"processed", "received"}


def test_a_second_worker_stands_by_until_the_first_stops(
    settings: Settings, engine: Engine, api: httpx.Client, tenant: Tenant, live_server: str
) -> None:
    first_handler, second_handler = Recorder(), Recorder()
    first = WorkerThread(settings, tenant, live_server, first_handler).__enter__()
    try:
        assert wait_until(lambda: consumer_count(settings, tenant) == 1)  # the first holds it
        with WorkerThread(settings, tenant, live_server, second_handler) as second:
            customers_with_events(api, tenant, customers=3, events=2)
            publish(settings, interleaved_rows(engine, tenant))
            assert wait_until(lambda: first_handler.count() == 6)
            assert second_handler.count() == 0 and consumer_count(settings, tenant) == 1
            first.__exit__(None, None, None)
            customer_id = create_customers(api, tenant, 1)[0]
            [row] = [
                r for r in interleaved_rows(engine, tenant) if str(r.customer_id) == customer_id
            ]
            publish(settings, [row])
            assert wait_until(lambda: second.consumer.stats.processed == 1, timeout=30)
            assert second_handler.count() == 1
    finally:
        first.stop.set()
