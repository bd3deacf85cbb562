"""SQL of the events domain: the outbox insert and the tenant-scoped reads."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Row, text

from service.events.schemas import EventFilters, EventOrigin

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
