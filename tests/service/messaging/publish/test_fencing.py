"""Fencing that cannot be outrun: a relay frozen past its lease publishes nothing afterwards."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from service.config import Settings
from service.messaging.messages import POSSIBLE_DUPLICATE_HEADER
from service.messaging.publish.leases import PartitionLeases
from service.messaging.publish.publisher import ConfirmingPublisher
from service.messaging.publish.relay import (
    BatchOutcome,
    PossibleDuplicates,
    publish_pending_batch,
)
from tests.support.outbox import (
    ProvisionedTenant,
    drain_queue,
    event_rows,
    insert_customer_events,
    wait_until,
)
from tests.support.tcp_proxy import TcpProxy

# The frozen relay's broker handshake waits this long: well past its lease, and still
# within RabbitMQ's handshake_timeout (10 s), which would otherwise close the connection.
FREEZE_SECONDS = 8.0
LEASE_TTL_SECONDS = 2.0
CUSTOMERS = 5


def lease_of(engine: Engine, settings: Settings) -> PartitionLeases:
    return PartitionLeases(
        engine,
        settings.relay.partitions,
        settings.relay.lease_ttl_seconds,
        settings.relay.heartbeat_seconds,
    )


def queued(url: str, queue: str) -> list[dict[str, Any]]:
    """The queue's messages in order: event id, customer, sequence, possible-duplicate mark."""
    messages = []
    for _, properties, body in drain_queue(url, queue):
        event = json.loads(body)
        headers = properties.headers or {}
        messages.append(
            {
                "event_id": event["event_id"],
                "customer_id": event["customer_id"],
                "sequence": event["sequence"],
                "marked": bool(headers.get(POSSIBLE_DUPLICATE_HEADER)),
            }
        )
    return messages


def drain_with(engine: Engine, leases: PartitionLeases, url: str) -> None:
    """Publish rounds through a direct broker connection until nothing is due."""
    duplicates = PossibleDuplicates()
    with ConfirmingPublisher(url) as publisher:
        while publish_pending_batch(engine, publisher, leases, 50, 2.0, duplicates).claimed:
            pass


def take_everything(leases: PartitionLeases, partitions: int) -> None:
    """Rebalance until every partition is ours (the frozen relay's leases expired)."""
    leases.join(renew_in_background=False)

    def all_taken() -> bool:
        leases.rebalance()
        return len(leases.tenure().tokens) == partitions

    assert wait_until(all_taken, timeout=FREEZE_SECONDS, interval=0.2)


def test_a_relay_frozen_in_connect_past_its_lease_sends_nothing_after_the_new_owner(
    outbox_settings: Settings,
    outbox_engine: Engine,
    tenant: ProvisionedTenant,
    tcp_proxy_factory: Callable[[str, int], TcpProxy],
) -> None:
    _, consumer_id, queues = tenant
    url = outbox_settings.broker.url
    settings = outbox_settings.updated(
        {"relay_lease_ttl_seconds": LEASE_TTL_SECONDS, "relay_heartbeat_seconds": 0.5}
    )
    first = insert_customer_events(outbox_engine, consumer_id, CUSTOMERS, per_customer=3)
    proxy = tcp_proxy_factory("127.0.0.1", 5672)
    proxy.delay(FREEZE_SECONDS)  # the first chunk (the AMQP header) waits; then all flows
    frozen = lease_of(outbox_engine, settings)
    frozen.join(renew_in_background=False)  # frozen: it renews nothing from now on
    outcome: list[BatchOutcome] = []

    def frozen_round() -> None:
        with ConfirmingPublisher(proxy.url_for(url), connect_timeout=FREEZE_SECONDS) as publisher:
            outcome.append(publish_pending_batch(outbox_engine, publisher, frozen, 50, 2.0))

    thread = threading.Thread(target=frozen_round)
    thread.start()
    try:
        assert wait_until(lambda: proxy.connection_count == 1, timeout=10)
        time.sleep(1.0)  # its protocol header is in the proxy's delayed chunk
        proxy.pass_through()
        successor = lease_of(outbox_engine, settings)
        take_everything(successor, settings.relay.partitions)
        drain_with(outbox_engine, successor, url)
        later = insert_customer_events(outbox_engine, consumer_id, CUSTOMERS, per_customer=2)
        drain_with(outbox_engine, successor, url)
        assert thread.is_alive(), "the frozen relay must still be in connect() here"
        thread.join(FREEZE_SECONDS * 3)
        successor.leave()
    finally:
        proxy.pass_through()
        thread.join(FREEZE_SECONDS * 3)
        frozen.leave()
    assert not thread.is_alive()
    [stale] = outcome
    assert stale.claimed == CUSTOMERS * 3 and stale.published == 0  # read, then fenced off
    messages = queued(url, queues.queue)
    assert sorted(message["event_id"] for message in messages) == sorted(first + later)
    by_customer: dict[str, list[int]] = defaultdict(list)
    for message in messages:
        by_customer[message["customer_id"]].append(message["sequence"])
    assert len(by_customer) == CUSTOMERS
    assert all(sequences == [1, 2, 3, 4, 5] for sequences in by_customer.values()), by_customer
    assert all(message["marked"] for message in messages)  # every publish after a takeover
    rows = event_rows(outbox_engine, first + later)
    assert {row.publish_status for row in rows.values()} == {"published"}
    assert {row.publish_try_count for row in rows.values()} == {1}
