"""SQL of the delivery domain: republish selections and delivery receipts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

import asyncpg
from sqlalchemy import Connection, Row, text

from service.db_async import PooledConnection
from service.delivery.schemas import Selection

# resend: events still waiting to be published; redeliver: published, not yet delivered.
KIND_CONDITION = {
    "resend": "e.publish_status = 'pending'",
    "redeliver": "e.publish_status = 'published' AND e.deliver_status <> 'delivered'",
}

FILTERS = """
    AND e.created_at >= now() - make_interval(days => :period_in_days)
    AND e.publish_try_count < :max_try_count
    AND (CAST(:event_types AS text[]) IS NULL OR e.event_type = ANY(CAST(:event_types AS text[])))
    AND (CAST(:consumer_id AS uuid) IS NULL OR e.consumer_id = CAST(:consumer_id AS uuid))
"""

COUNT_GROUPS = """
    SELECT c.name AS consumer_name, e.event_type, count(*) AS count
    FROM customer_events e LEFT JOIN consumers c ON c.consumer_id = e.consumer_id
    WHERE {kind} {filters}
    GROUP BY c.name, e.event_type
    ORDER BY c.name, e.event_type
"""

SELECT_IDS = """
    SELECT e.event_id FROM customer_events e
    WHERE {kind} {filters}
    ORDER BY e.created_at, e.event_id
    LIMIT :limit
"""

CLAIM = """
    SELECT e.event_id, e.customer_id, e.consumer_id, e.event_type, e.payload_json,
           e.metadata_json, e.created_at, e.publish_try_count, c.name AS consumer_name
    FROM customer_events e LEFT JOIN consumers c ON c.consumer_id = e.consumer_id
    WHERE {kind} {filters}
      AND (CAST(:after_at AS timestamptz) IS NULL
           OR (e.created_at, e.event_id)
              > (CAST(:after_at AS timestamptz), CAST(:after_id AS uuid)))
    ORDER BY e.created_at, e.event_id
    LIMIT :limit
    FOR UPDATE OF e SKIP LOCKED
"""

CONSUMER_BY_NAME = text("SELECT consumer_id FROM consumers WHERE name = :name")
CONSUMER_NAMES = text("SELECT name FROM consumers ORDER BY name")

# One statement: check ownership, insert the receipt once, and move the event only when the
# receipt is new. delivered is final: a later 'failed' receipt never downgrades it.
# asyncpg placeholders: $1 event_id, $2 consumer_id, $3 status, $4 detail. One statement:
# the receipt and the event's delivery state commit together, on the event loop.
CONFIRM_DELIVERY = """
    WITH target AS (
        SELECT event_id FROM customer_events
        WHERE event_id = $1 AND consumer_id = $2
    ), receipt AS (
        INSERT INTO consumer_event_receipts (event_id, consumer_id, status, detail)
        SELECT event_id, $2, $3, $4 FROM target
        ON CONFLICT ON CONSTRAINT consumer_event_receipts_unique DO NOTHING
        RETURNING event_id
    ), moved AS (
        UPDATE customer_events e
        SET deliver_try_count = e.deliver_try_count + 1,
            deliver_status = CASE
                WHEN e.deliver_status = 'delivered' THEN 'delivered'
                WHEN $3 = 'failed' THEN 'failed'
                ELSE 'delivered' END,
            delivered_at = CASE
                WHEN $3 <> 'failed' AND e.delivered_at IS NULL THEN now()
                ELSE e.delivered_at END
        FROM receipt WHERE e.event_id = receipt.event_id
        RETURNING e.event_id, e.deliver_status, e.delivered_at, e.deliver_try_count
    )
    SELECT e.event_id,
           m.event_id IS NOT NULL AS inserted,
           CASE WHEN m.event_id IS NULL THEN e.deliver_status ELSE m.deliver_status END
               AS deliver_status,
           CASE WHEN m.event_id IS NULL THEN e.delivered_at ELSE m.delivered_at END
               AS delivered_at,
           CASE WHEN m.event_id IS NULL THEN e.deliver_try_count ELSE m.deliver_try_count END
               AS deliver_try_count
    FROM customer_events e LEFT JOIN moved m ON m.event_id = e.event_id
    WHERE e.event_id = $1 AND e.consumer_id = $2
    """

EVENT_COUNTS = text(
    """
    SELECT event_type, publish_status, deliver_status, count(*) AS count
    FROM customer_events
    WHERE (CAST(:consumer_id AS uuid) IS NULL OR consumer_id = CAST(:consumer_id AS uuid))
    GROUP BY event_type, publish_status, deliver_status
    ORDER BY event_type, publish_status, deliver_status
    """
)


def _sql(template: str, kind: str) -> Any:
    return text(template.format(kind=KIND_CONDITION[kind], filters=FILTERS))


def _params(selection: Selection) -> dict[str, Any]:
    return {
        "period_in_days": selection.period_in_days,
        "max_try_count": selection.max_try_count,
        "event_types": list(selection.event_types) or None,
        "consumer_id": selection.consumer_id,
    }


def count_groups(connection: Connection, kind: str, selection: Selection) -> Sequence[Row[Any]]:
    """Matching events counted per consumer name and event type."""
    return connection.execute(_sql(COUNT_GROUPS, kind), _params(selection)).all()


def first_ids(connection: Connection, kind: str, selection: Selection, limit: int) -> list[UUID]:
    """The ids of the first ``limit`` matching events, oldest first."""
    params = {**_params(selection), "limit": limit}
    return list(connection.execute(_sql(SELECT_IDS, kind), params).scalars())


def claim(
    connection: Connection, kind: str, selection: Selection, after: dict[str, Any], limit: int
) -> Sequence[Row[Any]]:
    """Lock up to ``limit`` matching events after the cursor (rows held by a relay skipped)."""
    params = {**_params(selection), **after, "limit": limit}
    return connection.execute(_sql(CLAIM, kind), params).all()


def consumer_names(connection: Connection) -> list[str]:
    """Every consumer's name, sorted (for operator commands over all tenants)."""
    return list(connection.execute(CONSUMER_NAMES).scalars())


def consumer_id_by_name(connection: Connection, name: str) -> UUID | None:
    return connection.execute(CONSUMER_BY_NAME, {"name": name}).scalar_one_or_none()


async def confirm_delivery(
    connection: PooledConnection,
    event_id: UUID,
    consumer_id: UUID,
    status: str,
    detail: str | None,
) -> asyncpg.Record | None:
    """Record a receipt and move the event (first receipt of a status only).

    The row carries ``inserted`` (False for a duplicate) and the delivery state; None when
    the event does not exist or belongs to another consumer.
    """
    return await connection.fetchrow(CONFIRM_DELIVERY, event_id, consumer_id, status, detail)


def event_counts(connection: Connection, consumer_id: UUID | None) -> Sequence[Row[Any]]:
    """Events counted per type, publish status and delivery status (all or one consumer)."""
    return connection.execute(EVENT_COUNTS, {"consumer_id": consumer_id}).all()
