"""SQL of the events domain: the outbox insert and the tenant-scoped reads."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import asyncpg
from sqlalchemy import Connection, Row, text

from service.events.schemas import EventFilters, EventOrigin
from service.kit.db_async import PooledConnection

INSERT_EVENT = text(
    """
    INSERT INTO customer_events
        (customer_id, consumer_id, event_type, source_service, payload_json, metadata_json,
         publish_status)
    VALUES
        (:customer_id, :consumer_id, :event_type, :source_service,
         CAST(:payload AS jsonb), CAST(:metadata AS jsonb), 'pending')
    RETURNING event_id
    """
)

SELECT_EVENT = text(
    """
    SELECT event_id, customer_id, consumer_id, event_type, source_service,
           payload_json AS payload, metadata_json AS metadata,
           publish_status, publish_try_count, publish_failure_reason, published_at,
           deliver_status, deliver_try_count, delivered_at, created_at, sequence
    FROM customer_events
    WHERE event_id = :event_id AND consumer_id = :consumer_id
    """
)

LIST_EVENTS = text(
    """
    SELECT event_id, customer_id, consumer_id, event_type, source_service,
           payload_json AS payload, metadata_json AS metadata,
           publish_status, publish_try_count, publish_failure_reason, published_at,
           deliver_status, deliver_try_count, delivered_at, created_at, sequence
    FROM customer_events
    WHERE consumer_id = :consumer_id
      AND (CAST(:customer_id AS uuid) IS NULL OR customer_id = :customer_id)
      AND (CAST(:event_type AS text) IS NULL OR event_type = :event_type)
      AND (CAST(:publish_status AS text) IS NULL OR publish_status = :publish_status)
      AND (CAST(:deliver_status AS text) IS NULL OR deliver_status = :deliver_status)
      AND (CAST(:since AS timestamptz) IS NULL OR created_at >= :since)
      AND (CAST(:after_at AS timestamptz) IS NULL
           OR (created_at, event_id)
              > (CAST(:after_at AS timestamptz), CAST(:after_id AS uuid)))
    ORDER BY created_at, event_id
    LIMIT :limit
    """
)

# The highest delivered sequence of one aggregate of a tenant. asyncpg placeholders:
# $1 consumer_id, $2 customer_id (NULL: the consumer-level aggregate). Two statements so
# each uses its index (ix_customer_events_customer_id, ix_customer_events_consumer_level).
LAST_DELIVERED_OF_CUSTOMER = """
    SELECT event_id, sequence FROM customer_events
    WHERE consumer_id = $1 AND customer_id = $2 AND deliver_status = 'delivered'
    ORDER BY sequence DESC LIMIT 1
    """
LAST_DELIVERED_OF_CONSUMER = """
    SELECT event_id, sequence FROM customer_events
    WHERE consumer_id = $1 AND customer_id IS NULL AND deliver_status = 'delivered'
    ORDER BY sequence DESC LIMIT 1
    """

# The same for many customers of one tenant (the worker's batched look-up): $1 consumer_id,
# $2 customer_ids.
LAST_DELIVERED_OF_CUSTOMERS_ASYNC = """
    SELECT DISTINCT ON (customer_id) customer_id, event_id, sequence FROM customer_events
    WHERE consumer_id = $1 AND customer_id = ANY($2::uuid[]) AND deliver_status = 'delivered'
    ORDER BY customer_id, sequence DESC
    """

# The same for many customers of one tenant at once (DLQ replay).
LAST_DELIVERED_OF_CUSTOMERS = text(
    """
    SELECT customer_id, max(sequence) AS sequence FROM customer_events
    WHERE consumer_id = :consumer_id AND customer_id = ANY(CAST(:customer_ids AS uuid[]))
      AND deliver_status = 'delivered'
    GROUP BY customer_id
    """
)
LAST_DELIVERED_OF_CONSUMER_SYNC = text(
    """
    SELECT max(sequence) FROM customer_events
    WHERE consumer_id = :consumer_id AND customer_id IS NULL AND deliver_status = 'delivered'
    """
)


def insert_event(
    connection: Connection,
    *,
    consumer_id: UUID,
    customer_id: UUID | None,
    event_type: str,
    origin: EventOrigin,
    payload: dict[str, Any],
) -> UUID:
    """Append one ``pending`` event in the caller's transaction; returns its id."""
    event_id: UUID = connection.execute(
        INSERT_EVENT,
        {
            "customer_id": customer_id,
            "consumer_id": consumer_id,
            "event_type": event_type,
            "source_service": origin.source_service,
            "payload": json.dumps(payload, default=str),
            "metadata": json.dumps({"request_id": origin.request_id}),
        },
    ).scalar_one()
    return event_id


def get_event(connection: Connection, consumer_id: UUID, event_id: UUID) -> Row[Any] | None:
    """One of the tenant's events, or None."""
    return connection.execute(
        SELECT_EVENT, {"event_id": event_id, "consumer_id": consumer_id}
    ).first()


def list_events(
    connection: Connection,
    consumer_id: UUID,
    filters: EventFilters,
    after: dict[str, Any],
    limit: int,
) -> Sequence[Row[Any]]:
    """Up to ``limit`` of the tenant's events after the cursor position, oldest first."""
    params = {
        "consumer_id": consumer_id,
        "customer_id": filters.customer_id,
        "event_type": filters.event_type,
        "publish_status": filters.publish_status,
        "deliver_status": filters.deliver_status,
        "since": filters.since,
        "limit": limit,
        **after,
    }
    return connection.execute(LIST_EVENTS, params).all()


async def last_delivered(
    connection: PooledConnection, consumer_id: UUID, customer_id: UUID | None
) -> asyncpg.Record | None:
    """``event_id, sequence`` of the aggregate's last delivered event, or None."""
    if customer_id is None:
        return await connection.fetchrow(LAST_DELIVERED_OF_CONSUMER, consumer_id)
    return await connection.fetchrow(LAST_DELIVERED_OF_CUSTOMER, consumer_id, customer_id)


async def last_delivered_of_customers(
    connection: PooledConnection, consumer_id: UUID, customer_ids: Sequence[UUID]
) -> list[asyncpg.Record]:
    """``customer_id, event_id, sequence`` of each customer's last delivered event (if any)."""
    return await connection.fetch(LAST_DELIVERED_OF_CUSTOMERS_ASYNC, consumer_id, customer_ids)


def last_delivered_sequences(
    connection: Connection, consumer_id: UUID, customer_ids: Sequence[UUID]
) -> dict[UUID | None, int]:
    """customer_id (None: the consumer-level aggregate) -> highest delivered sequence.

    Aggregates with nothing delivered are absent.
    """
    rows = connection.execute(
        LAST_DELIVERED_OF_CUSTOMERS,
        {"consumer_id": consumer_id, "customer_ids": [str(c) for c in customer_ids]},
    ).all()
    found: dict[UUID | None, int] = {row.customer_id: int(row.sequence) for row in rows}
    own = connection.execute(
        LAST_DELIVERED_OF_CONSUMER_SYNC, {"consumer_id": consumer_id}
    ).scalar_one_or_none()
    if own is not None:
        found[None] = int(own)
    return found
