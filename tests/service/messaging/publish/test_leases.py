"""Partition leases: fair shares, takeover of a dead relay, fencing, no locks across the broker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from service.config import Settings
from service.messaging.publish.leases import PartitionLeases
from service.messaging.publish.publisher import ConfirmingPublisher
from service.messaging.publish.relay import OutboxRelay, publish_pending_batch
from tests.support.outbox import (
    ProvisionedTenant,
    event_rows,
    insert_events,
    joined_leases,
    queue_depth,
    wait_until,
)
from tests.support.processes import FintegrateProcess
from tests.support.tcp_proxy import TcpProxy


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def owners(engine: Engine) -> dict[int, str | None]:
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT partition_no, owner_id FROM relay_partitions"))
        return {row.partition_no: (str(row.owner_id) if row.owner_id else None) for row in rows}


def expire_leases_of(engine: Engine, relay_id: str) -> None:
    """What PostgreSQL's clock does to the leases of a relay that stopped renewing."""
    with engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE relay_partitions SET lease_expires_at = now() - interval '1 second' "
                "WHERE owner_id = :r"
            ),
            {"r": relay_id},
        )
        connection.execute(
            text(
                "UPDATE relay_members SET heartbeat_at = now() - interval '1 hour' "
                "WHERE relay_id = :r"
            ),
            {"r": relay_id},
        )


def leases(
    engine: Engine, settings: Settings, clock: Callable[[], float] = time.monotonic
) -> PartitionLeases:
    return PartitionLeases(
        engine,
        settings.relay.partitions,
        settings.relay.lease_ttl_seconds,
        settings.relay.heartbeat_seconds,
        clock=clock,
    )


def test_a_relay_takes_every_partition_then_shares_with_a_newcomer(
    outbox_settings: Settings, outbox_engine: Engine
) -> None:
    first, second = leases(outbox_engine, outbox_settings), leases(outbox_engine, outbox_settings)
    first.join()
    second.join()
    try:
        assert len(first.tenure().tokens) == outbox_settings.relay.partitions
        assert second.tenure().tokens == {}
        first.rebalance()  # the newcomer is live: give half back
        second.rebalance()
        mine, theirs = set(first.tenure().tokens), set(second.tenure().tokens)
        assert len(mine) == len(theirs) == outbox_settings.relay.partitions // 2
        assert not mine & theirs
    finally:
        first.leave()
        second.leave()
    assert set(owners(outbox_engine).values()) == {None}


def test_a_taken_over_partition_can_be_neither_published_nor_marked_by_its_old_owner(
    outbox_settings: Settings, outbox_engine: Engine, tenant: ProvisionedTenant
) -> None:
    _, consumer_id, queues = tenant
    clock = FakeClock()
    old = leases(outbox_engine, outbox_settings, clock)
    old.join(renew_in_background=False)  # a relay that froze right after taking its leases
    stale = old.tenure()
    assert len(stale.tokens) == outbox_settings.relay.partitions
    clock.now += outbox_settings.relay.lease_ttl_seconds
    assert old.tenure().tokens == {}  # its local deadline passed: it publishes nothing
    old.renew()
    assert old.tenure() == stale  # renewed while nobody else took them: same tokens
    [event_id] = insert_events(outbox_engine, consumer_id, 1)
    expire_leases_of(outbox_engine, old.relay_id)
    with joined_leases(outbox_engine, outbox_settings) as new:
        assert set(new.tenure().tokens) == set(stale.tokens)
        assert all(new.tenure().tokens[no] == stale.tokens[no] + 1 for no in stale.tokens)
        with outbox_engine.begin() as connection:
            assert old.fence(connection, stale) == set()  # marking: refused in PostgreSQL
        clock.now += outbox_settings.relay.lease_ttl_seconds  # publishing: refused locally
        assert old.still_held(stale) == set()
        with ConfirmingPublisher(outbox_settings.broker.url) as publisher:
            outcome = publish_pending_batch(outbox_engine, publisher, old, 10, max_backoff=2.0)
        assert outcome.claimed == 0
        assert queue_depth(outbox_settings.broker.url, queues.queue) == 0
        old.renew()  # the old owner learns it lost them
        assert old.tenure().tokens == {}
    old.leave()
    assert event_rows(outbox_engine, [event_id])[event_id].publish_status == "pending"


def test_relays_with_different_partition_counts_do_not_both_publish(
    outbox_settings: Settings, outbox_engine: Engine
) -> None:
    with joined_leases(outbox_engine, outbox_settings):
        other = PartitionLeases(outbox_engine, 8, 8.0, 1.0)
        other.join()
        try:
            assert other.tenure().tokens == {}
        finally:
            other.leave()


@pytest.mark.slow
def test_a_killed_relays_partitions_are_taken_over_within_the_lease_ttl(
    outbox_settings: Settings, outbox_engine: Engine, tenant: ProvisionedTenant, tmp_path: Path
) -> None:
    settings = outbox_settings.updated(
        {"relay_lease_ttl_seconds": 8.0, "relay_heartbeat_seconds": 1.0}
    )
    relays = [
        FintegrateProcess(f"relay{n}", ["relay"], settings, tmp_path).start() for n in range(2)
    ]
    try:
        half = settings.relay.partitions // 2
        assert wait_until(
            lambda: (
                sorted(
                    list(owners(outbox_engine).values()).count(owner)
                    for owner in set(owners(outbox_engine).values())
                )
                == [half, half]
            ),
            30,
        )
        relays[0].kill()
        killed_at = time.monotonic()
        assert wait_until(lambda: len(set(owners(outbox_engine).values())) == 1, 30)
        takeover = time.monotonic() - killed_at
        _, consumer_id, queues = tenant
        insert_events(outbox_engine, consumer_id, 40)
        assert wait_until(lambda: queue_depth(settings.broker.url, queues.queue) == 40, 30)
    finally:
        for relay in relays:
            relay.terminate()
    bound = settings.relay.lease_ttl_seconds + 2 * settings.relay.heartbeat_seconds + 2.0
    assert takeover <= bound, f"takeover took {takeover:.1f}s"
    print(f"\n[figures] lease takeover after kill -9: {takeover:.1f}s (TTL 8s, heartbeat 1s)")


def test_no_row_is_locked_while_the_broker_is_waited_on(
    outbox_settings: Settings,
    outbox_engine: Engine,
    tenant: ProvisionedTenant,
    tcp_proxy_factory: Callable[[str, int], TcpProxy],
) -> None:
    _, consumer_id, queues = tenant
    proxy = tcp_proxy_factory("127.0.0.1", 5672)
    settings = outbox_settings.updated({"rabbitmq_url": proxy.url_for(outbox_settings.broker.url)})
    stop = threading.Event()
    relay = OutboxRelay.from_settings(settings, outbox_engine, stop)
    thread = threading.Thread(target=relay.run)
    thread.start()
    try:
        insert_events(outbox_engine, consumer_id, 1)  # the relay connects to the broker
        assert wait_until(lambda: queue_depth(outbox_settings.broker.url, queues.queue) == 1)
        assert relay.idle.wait(20)
        proxy.delay(1.0)  # every chunk to or from the broker now waits 1 s: slow confirms
        ids = insert_events(outbox_engine, consumer_id, 20)
        time.sleep(0.3)  # the relay has read them and waits for the broker's confirms
        assert not relay.idle.is_set()
        with outbox_engine.begin() as connection:
            connection.execute(text("SET LOCAL lock_timeout = '200ms'"))
            locked = connection.execute(
                text(
                    "SELECT count(*) FROM (SELECT 1 FROM customer_events "
                    "WHERE event_id = ANY(CAST(:ids AS uuid[])) FOR UPDATE NOWAIT) AS l"
                ),
                {"ids": ids},
            ).scalar_one()
            still_pending = {row.publish_status for row in event_rows(outbox_engine, ids).values()}
        assert locked == 20 and still_pending == {"pending"}
        assert wait_until(lambda: queue_depth(outbox_settings.broker.url, queues.queue) == 21)
    finally:
        proxy.pass_through()
        stop.set()
        thread.join(30)
    rows = event_rows(outbox_engine, ids)
    assert wait_until(
        lambda: (
            {row.publish_status for row in event_rows(outbox_engine, ids).values()} == {"published"}
        ),
        20,
    ), rows
