"""Rules of the events read API: tenant-scoped listing and lookup; counts and backlog."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
from sqlalchemy import Connection, Row

from service.events import outbox, repository, stats
from service.events.schemas import (
    EventDetail,
    EventFilters,
    EventList,
    EventOut,
    LastDelivered,
    LastDeliveredList,
    LastDeliveredQuery,
)
from service.kit.db_async import pooled_connection
from service.kit.errors import NotFound
from service.kit.pagination import build_page, cursor_params, decode_cursor
from service.webhooks.delivery import repository as webhook_deliveries

EVENT_NOT_FOUND = "Event not found"


def list_events(
    connection: Connection,
    consumer_id: UUID,
    filters: EventFilters,
    cursor: str | None,
    limit: int,
) -> dict[str, Any]:
    """One page of the tenant's events, oldest first."""
    after = cursor_params(decode_cursor(cursor))
    rows = repository.list_events(connection, consumer_id, filters, after, limit + 1)
    events = [EventOut.model_validate(row._mapping) for row in rows]
    return build_page(events, limit, lambda event: (event.created_at, event.event_id))


def get_event(connection: Connection, consumer_id: UUID, event_id: UUID) -> EventDetail:
    """One of the tenant's events with its webhook deliveries; NotFound for a missing or
    foreign id alike."""
    row = repository.get_event(connection, consumer_id, event_id)
    if row is None:
        raise NotFound(EVENT_NOT_FOUND)
    webhooks = webhook_deliveries.event_deliveries(connection, consumer_id, event_id)
    return EventDetail.model_validate(
        {**row._mapping, "webhooks": [dict(item._mapping) for item in webhooks]}
    )


def events_after(
    connection: Connection,
    consumer_id: UUID,
    customer_id: UUID | None,
    after: int,
    through: int | None,
    limit: int,
) -> EventList:
    """One aggregate's events after ``after`` (through ``through``), in sequence order.

    A customer that is unknown or another tenant's has no events here, like an empty one.
    """
    upper = through if through is not None else 2**63 - 1
    rows = repository.events_after(connection, consumer_id, customer_id, after, upper, limit)
    return EventList(items=[EventOut.model_validate(row._mapping) for row in rows])


def lost_events(
    connection: Connection, consumer_id: UUID, older_than_ms: int, cursor: str | None, limit: int
) -> dict[str, Any]:
    """One page of the tenant's published events older than ``older_than_ms`` and still
    undelivered, oldest first."""
    after = cursor_params(decode_cursor(cursor))
    rows = repository.lost_events(connection, consumer_id, older_than_ms, after, limit + 1)
    events = [EventOut.model_validate(row._mapping) for row in rows]
    return build_page(events, limit, lambda event: (event.created_at, event.event_id))


async def last_delivered(
    pool: asyncpg.Pool, consumer_id: UUID, customer_id: UUID | None
) -> LastDelivered:
    """The aggregate's last delivered event; sequence 0 when none or not the tenant's."""
    async with pooled_connection(pool) as connection:
        row = await repository.last_delivered(connection, consumer_id, customer_id)
    return _last_delivered(customer_id or consumer_id, row)


async def last_delivered_many(
    pool: asyncpg.Pool, consumer_id: UUID, query: LastDeliveredQuery
) -> LastDeliveredList:
    """``last_delivered`` for several aggregates in two statements."""
    async with pooled_connection(pool) as connection:
        rows = await repository.last_delivered_of_customers(
            connection, consumer_id, query.customer_ids
        )
        own = None
        if query.include_consumer:
            own = await repository.last_delivered(connection, consumer_id, None)
    found = {row["customer_id"]: row for row in rows}
    items = [
        _last_delivered(customer_id, found.get(customer_id)) for customer_id in query.customer_ids
    ]
    if query.include_consumer:
        items.append(_last_delivered(consumer_id, own))
    return LastDeliveredList(items=items)


def _last_delivered(aggregate_id: UUID, row: Any) -> LastDelivered:
    return LastDelivered(
        aggregate_id=aggregate_id,
        sequence=int(row["sequence"]) if row else 0,
        event_id=row["event_id"] if row else None,
    )


LOOKUP_CHUNK = 1000


def last_delivered_sequences(
    connection: Connection, consumer_id: str, customer_ids: list[str]
) -> dict[str | None, int]:
    """customer_id (None: the consumer-level aggregate) -> its highest delivered sequence.

    For DLQ replay; aggregates with nothing delivered are absent.
    """
    found: dict[str | None, int] = {}
    for start in range(0, max(len(customer_ids), 1), LOOKUP_CHUNK):
        chunk = [UUID(value) for value in customer_ids[start : start + LOOKUP_CHUNK]]
        rows = repository.last_delivered_sequences(connection, UUID(consumer_id), chunk)
        found.update({str(key) if key else None: value for key, value in rows.items()})
    return found


def event_counts(connection: Connection, consumer_id: UUID | None) -> list[dict[str, Any]]:
    """Events per type, publish and delivery status (all consumers or one), from the counters.

    Folds the pending deltas first; the caller commits to keep the fold.
    """
    stats.compact_counts(connection)
    return [dict(row._mapping) for row in stats.event_counts(connection, consumer_id)]


def outbox_backlog(connection: Connection) -> Row[Any]:
    """The events waiting to be published: ``pending`` and ``oldest_created_at``."""
    return outbox.pending_summary(connection)


def current_payloads(connection: Connection, event_ids: list[str]) -> dict[str, Any]:
    """event_id -> its payload as stored now (erased ones erased), for DLQ replay; unknown
    ids are absent."""
    found: dict[str, Any] = {}
    for start in range(0, len(event_ids), LOOKUP_CHUNK):
        chunk = [UUID(value) for value in event_ids[start : start + LOOKUP_CHUNK]]
        rows = repository.current_payloads(connection, chunk)
        found.update({str(key): value for key, value in rows.items()})
    return found


def recent_delivery_p99(connection: Connection, minutes: int) -> Row[Any]:
    """``delivered`` and ``p99_seconds`` (creation to first delivered receipt), last minutes."""
    return repository.recent_delivery_p99(connection, minutes)


@dataclass(frozen=True)
class BacklogGauges:
    """The backlog as the metrics show it."""

    pending: int
    oldest_seconds: float


def outbox_gauges(connection: Connection) -> BacklogGauges:
    """Pending count (counters) and oldest pending age (a bounded index walk)."""
    return BacklogGauges(stats.pending_events(connection), outbox.oldest_pending_age(connection))
