"""Factories and probes for event-pipeline tests: consumer and event rows, queues, a relay."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, text

from service.config import Settings
from service.messaging import topology
from service.messaging.connection import open_blocking, vhost_of
from service.messaging.messages import OutboundEvent
from service.messaging.operate.management import ManagementClient
from service.messaging.operate.provisioning import ProvisionResult
from service.messaging.publish.leases import PartitionLeases
from service.messaging.publish.relay import OutboxRelay

# A relay test's tenant: (name, consumer_id, what provisioning declared).
ProvisionedTenant = tuple[str, str, ProvisionResult]

INSERT_CONSUMER = text("INSERT INTO consumers (name) VALUES (:name) RETURNING consumer_id")
INSERT_EVENTS = text(
    """
    INSERT INTO customer_events
        (customer_id, consumer_id, event_type, source_service, payload_json, created_at,
         next_attempt_at)
    SELECT gen_random_uuid(), :consumer_id, :event_type, 'tests', CAST(:payload AS jsonb),
           now() - make_interval(days => :age_days), now() - make_interval(days => :age_days)
    FROM generate_series(1, :count)
    RETURNING event_id
    """
)


def outbound_event(
    event_type: str = "customer_creation", consumer_name: str = "acme"
) -> OutboundEvent:
    """An event of a new customer, as the relay would publish it (no database row)."""
    return OutboundEvent(
        event_id=str(uuid.uuid4()),
        event_type=event_type,
        consumer_id=str(uuid.uuid4()),
        consumer_name=consumer_name,
        customer_id=str(uuid.uuid4()),
        occurred_at=datetime.now(UTC),
        sequence=1,
        payload={"name": "Ada"},
    )


def insert_consumer(engine: Engine, name: str) -> str:
    """A consumers row; returns its id."""
    with engine.begin() as connection:
        return str(connection.execute(INSERT_CONSUMER, {"name": name}).scalar_one())


def insert_events(
    engine: Engine,
    consumer_id: str,
    count: int = 1,
    event_type: str = "customer_creation",
    age_days: int = 0,
) -> list[str]:
    """``count`` pending events for one consumer, created ``age_days`` ago; returns ids."""
    with engine.begin() as connection:
        rows = connection.execute(
            INSERT_EVENTS,
            {
                "consumer_id": consumer_id,
                "event_type": event_type,
                "payload": json.dumps({"n": 1}),
                "age_days": age_days,
                "count": count,
            },
        )
        return [str(row.event_id) for row in rows]


CUSTOMER_EVENTS = text(
    """
    INSERT INTO customer_events (customer_id, consumer_id, event_type, source_service,
                                 payload_json, metadata_json)
    SELECT md5(:salt || (n % :customers)::text)::uuid, :consumer_id, 'customer_status_change',
           'tests', '{}', '{}'
    FROM generate_series(1, :count) AS n
    RETURNING event_id
    """
)


def insert_customer_events(
    engine: Engine, consumer_id: str, customers: int, per_customer: int
) -> list[str]:
    """``per_customer`` pending events for each of ``customers`` customers of the consumer
    (the same customers on every call: sequences 1, 2, … go on); returns ids."""
    with engine.begin() as connection:
        rows = connection.execute(
            CUSTOMER_EVENTS,
            {
                "salt": consumer_id,
                "customers": customers,
                "consumer_id": consumer_id,
                "count": customers * per_customer,
            },
        )
        return [str(row.event_id) for row in rows]


def set_state(engine: Engine, event_ids: list[str], **columns: Any) -> None:
    """Move bookkeeping columns (the only ones the append-only trigger lets change)."""
    assignments = ", ".join(f"{name} = :{name}" for name in columns)
    with engine.begin() as connection:
        connection.execute(
            text(
                f"UPDATE customer_events SET {assignments} "
                "WHERE event_id = ANY(CAST(:ids AS uuid[]))"
            ),
            {**columns, "ids": event_ids},
        )


def event_rows(engine: Engine, event_ids: list[str]) -> dict[str, Any]:
    """The bookkeeping columns of the given events, by event_id."""
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT * FROM customer_events WHERE event_id = ANY(CAST(:ids AS uuid[]))"),
            {"ids": event_ids},
        ).all()
    return {str(row.event_id): row for row in rows}


def receipt_count(engine: Engine, event_id: str) -> int:
    """Receipts recorded for the event (one per status at most)."""
    with engine.connect() as connection:
        return int(
            connection.execute(
                text("SELECT count(*) FROM consumer_event_receipts WHERE event_id = :id"),
                {"id": event_id},
            ).scalar_one()
        )


@contextmanager
def amqp_channel(url: str) -> Iterator[Any]:
    """A blocking channel on ``url`` (the first node of a list that answers), closed after."""
    connection = open_blocking(url)
    try:
        yield connection.channel()
    finally:
        if connection.is_open:
            connection.close()


def queue_depth(url: str, queue: str) -> int:
    """Messages ready in ``queue`` (passive declare)."""
    with amqp_channel(url) as channel:
        return int(channel.queue_declare(queue, passive=True).method.message_count)


def live_queue(settings: Settings, name: str) -> dict[str, Any] | None:
    """The queue as the management API shows it; None when it does not exist."""
    assert settings.broker.management_url
    with ManagementClient(
        settings.broker.management_url, vhost_of(settings.broker.url)
    ) as management:
        return management.queue(name)


def declared_queue(settings: Settings, name: str) -> dict[str, Any]:
    """The queue as the management API shows it; it must exist."""
    queue = live_queue(settings, name)
    assert queue is not None, name
    return queue


def drain_queue(url: str, queue: str) -> list[tuple[Any, Any, bytes]]:
    """Get and ack every ready message of ``queue``: (method, properties, body) each."""
    messages: list[tuple[Any, Any, bytes]] = []
    with amqp_channel(url) as channel:
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return messages
            messages.append((method, properties, body))


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, interval: float = 0.1) -> bool:
    """Poll ``condition`` until true or ``timeout`` seconds pass; the final value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def new_consumer_name(prefix: str = "c") -> str:
    """A consumer-name-safe unique name."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    assert topology.CONSUMER_NAME_PATTERN.match(name)
    return name


@contextmanager
def relay_running(settings: Settings, engine: Engine, **options: Any) -> Iterator[OutboxRelay]:
    """An OutboxRelay (``options`` go to it) running in a thread; stopped on leaving, and on a
    normal exit its thread must have ended within 30 s."""
    stop = threading.Event()
    relay = OutboxRelay.from_settings(settings, engine, stop, **options)
    thread = threading.Thread(target=relay.run, daemon=True)
    thread.start()
    try:
        yield relay
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()


@contextmanager
def joined_leases(engine: Engine, settings: Settings) -> Iterator[PartitionLeases]:
    """Partition leases of a relay that joined (and so holds its share); left at the end."""
    leases = PartitionLeases(
        engine,
        settings.relay.partitions,
        settings.relay.lease_ttl_seconds,
        settings.relay.heartbeat_seconds,
    )
    leases.join()
    try:
        yield leases
    finally:
        leases.leave()
