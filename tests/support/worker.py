"""Helpers of the tenant-side worker tests: customers and events made through a live API,
their messages published straight to the tenant's queue, a worker in a thread, a recording
handler, and the receipts the worker left."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import defaultdict
from typing import Any
from urllib.parse import quote

import httpx
from sqlalchemy import Engine, text

from service.config import Settings
from service.messaging.consume import WorkerConfig
from service.messaging.consume.consumer import EventConsumer
from service.messaging.messages import EventMessage, event_from_row
from service.messaging.publish.publisher import ConfirmingPublisher, outgoing_event
from service.messaging.publish.relay import OutboxRelay

# A consumer's data as the admin API answered (api_key, name, queue_name, ...).
Tenant = dict[str, Any]
# The status changes customers_with_events makes, in turn.
STATUSES = ("suspended", "active")
CUSTOMER_ROWS = text(
    """
    SELECT e.event_id, e.event_type, e.consumer_id, c.name AS consumer_name, e.customer_id,
           e.created_at, e.sequence, e.payload_json, e.metadata_json
    FROM customer_events e JOIN consumers c ON c.consumer_id = e.consumer_id
    WHERE e.consumer_id = :consumer_id AND e.customer_id IS NOT NULL
    """
)


def create_customers(api: httpx.Client, tenant: Tenant, count: int) -> list[str]:
    """``count`` new customers of the tenant; their ids."""
    headers = {"X-API-Key": tenant["api_key"]}
    created = []
    for index in range(count):
        response = api.post("/customer/data", json={"name": f"c{index}"}, headers=headers)
        assert response.status_code == 201, response.text
        created.append(response.json()["data"]["customer_id"])
    return created


def change_status(api: httpx.Client, tenant: Tenant, customer_id: str, status: str) -> None:
    """PATCH the customer's status as the tenant (one more event)."""
    response = api.patch(
        f"/customer/data/{customer_id}/status",
        json={"status": status},
        headers={"X-API-Key": tenant["api_key"]},
    )
    assert response.status_code == 200, response.text


def customers_with_events(
    api: httpx.Client, tenant: Tenant, customers: int, events: int
) -> list[str]:
    """``customers`` new customers with ``events`` events each (creation + status changes)."""
    created = create_customers(api, tenant, customers)
    for change in range(events - 1):
        for customer_id in created:
            change_status(api, tenant, customer_id, STATUSES[change % 2])
    return created


def tenant_events(engine: Engine, tenant: Tenant) -> list[str]:
    """Every event of the tenant (its consumer_created event included), oldest first."""
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT event_id FROM customer_events WHERE consumer_id = :id "
                "ORDER BY created_at, event_id"
            ),
            {"id": tenant["consumer_id"]},
        )
        return [str(row.event_id) for row in rows]


def interleaved_rows(engine: Engine, tenant: Tenant, group: int = 8) -> list[Any]:
    """The tenant's customer events: groups of ``group`` customers, round-robin by sequence."""
    with engine.connect() as connection:
        rows = connection.execute(CUSTOMER_ROWS, {"consumer_id": tenant["consumer_id"]}).all()
    order = {customer: n for n, customer in enumerate(sorted({row.customer_id for row in rows}))}
    return sorted(
        rows, key=lambda r: (order[r.customer_id] // group, r.sequence, order[r.customer_id])
    )


def expected_orders(rows: list[Any]) -> dict[str, list[int]]:
    """Per customer, the sequences of ``rows`` in order: what a handler must see."""
    orders: dict[str, list[int]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: r.sequence):
        orders[str(row.customer_id)].append(int(row.sequence))
    return orders


def receipts(engine: Engine, tenant: Tenant) -> list[tuple[str, str, str | None]]:
    """The tenant's receipts as (event_id, status, detail)."""
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT event_id, status, detail FROM consumer_event_receipts"
                " WHERE consumer_id = :id"
            ),
            {"id": tenant["consumer_id"]},
        )
        return [(str(row.event_id), row.status, row.detail) for row in rows]


def publish_all(settings: Settings, engine: Engine) -> None:
    """Publish every pending event as the relay does, until none is left."""
    OutboxRelay.from_settings(settings, engine, threading.Event()).drain()


def publish(
    settings: Settings, rows: list[Any], copies: int = 1, headers: dict[str, Any] | None = None
) -> None:
    """Publish each row's message ``copies`` times, back to back, with confirms."""
    messages = [outgoing_event(event_from_row(row), headers) for row in rows for _ in range(copies)]
    with ConfirmingPublisher(settings.broker.url) as publisher:
        assert all(result.ok for result in publisher.publish_batch(messages))


def event_body(**changes: Any) -> bytes:
    """The body of a valid event message, with ``changes`` to its fields."""
    document = {
        "event_id": str(uuid.uuid4()),
        "event_type": "customer_creation",
        "occurred_at": "2026-12-02T00:00:00+00:00",
        "consumer": {"consumer_id": str(uuid.uuid4()), "name": "acme"},
        "customer_id": str(uuid.uuid4()),
        "payload": {},
        "metadata": {},
        "schema_version": 1,
    }
    document.update(changes)
    return json.dumps(document).encode()


class WorkerThread:
    """An EventConsumer in a thread, recording the events its handler saw."""

    def __init__(
        self,
        settings: Settings,
        tenant: Tenant,
        api_url: str,
        handler: Any = None,
        **options: Any,
    ):
        self.seen: list[str] = []
        self.stop = threading.Event()
        worker_settings = settings.updated({"api_url": api_url, "api_key": tenant["api_key"]})
        self.consumer = EventConsumer(
            WorkerConfig.from_settings(worker_settings),
            tenant["name"],
            self.stop,
            handler or self.record,
            **options,
        )
        self.thread = threading.Thread(target=self.consumer.run, daemon=True)

    def record(self, message: EventMessage) -> None:
        self.seen.append(message.event_id)

    def __enter__(self) -> WorkerThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


class Recorder:
    """A handler of random duration recording each call; notices overlaps within a customer."""

    def __init__(self, max_seconds: float = 0.02, seed: int = 20261202):
        self.calls: list[tuple[str, int, str]] = []  # (customer_id, sequence, event_id)
        self.overlaps = 0
        self.max_parallel = 0
        self._running: set[str] = set()
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self._max_seconds = max_seconds

    def __call__(self, message: EventMessage) -> None:
        key = message.aggregate_key
        with self._lock:
            self.overlaps += key in self._running
            self._running.add(key)
            self.max_parallel = max(self.max_parallel, len(self._running))
            pause = self._random.uniform(0, self._max_seconds)
        time.sleep(pause)
        with self._lock:
            self._running.discard(key)
            self.calls.append(
                (str(message.customer_id), int(message.sequence or 0), message.event_id)
            )

    def sequences(self) -> dict[str, list[int]]:
        """Per customer, the sequences in the order the handler was called."""
        seen: dict[str, list[int]] = defaultdict(list)
        with self._lock:
            for customer_id, sequence, _ in self.calls:
                seen[customer_id].append(sequence)
        return seen

    def count(self) -> int:
        with self._lock:
            return len(self.calls)


def receipt_statuses(engine: Engine, tenant: Tenant) -> list[tuple[str, str]]:
    """The tenant's receipts as (event_id, status)."""
    return [(event, status) for event, status, _ in receipts(engine, tenant)]


def tenant_url(broker: dict[str, str]) -> str:
    """The AMQP URL of a tenant's own broker login (``broker`` of the consumer's data)."""
    user, password = quote(broker["username"], safe=""), quote(broker["password"], safe="")
    return f"amqp://{user}:{password}@127.0.0.1:5672/{quote(broker['vhost'], safe='')}"
