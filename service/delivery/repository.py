"""SQL of the delivery domain: republish selections and delivery receipts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Row, text

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

INSERT_RECEIPT = text(
    """
    INSERT INTO consumer_event_receipts (event_id, consumer_id, status, detail)
    VALUES (:event_id, :consumer_id, :status, :detail)
    ON CONFLICT ON CONSTRAINT consumer_event_receipts_unique DO NOTHING
    RETURNING receipt_id
    """
)

# delivered is final: a later 'failed' receipt never downgrades it.
RECORD_DELIVERY = text(
    """
    UPDATE customer_events
    SET deliver_try_count = deliver_try_count + 1,
        deliver_status = CASE
            WHEN deliver_status = 'delivered' THEN 'delivered'
            WHEN :status = 'failed' THEN 'failed'
            ELSE 'delivered' END,
        delivered_at = CASE
            WHEN :status <> 'failed' AND delivered_at IS NULL THEN now()
            ELSE delivered_at END
    WHERE event_id = :event_id AND consumer_id = :consumer_id
    """
)

EVENT_COUNTS = text(
    """
    SELECT event_type, publish_status, deliver_status, count(*) AS count
    FROM customer_events
    WHERE (CAST(:consumer_id AS uuid) IS NULL OR consumer_id = CAST(:consumer_id AS uuid))
    GROUP BY event_type, publish_status, deliver_status
    ORDER BY event_type, publish_status, deliver_status
    """
)

EVENT_DELIVERY = text(
    """
    SELECT event_id, deliver_status, delivered_at, deliver_try_count
    FROM customer_events WHERE event_id = :event_id AND consumer_id = :consumer_id
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


def insert_receipt(
    connection: Connection, event_id: UUID, consumer_id: UUID, status: str, detail: str | None
) -> bool:
    """Record a receipt; False when the same (event, consumer, status) was recorded before."""
    params = {"event_id": event_id, "consumer_id": consumer_id, "status": status, "detail": detail}
    return connection.execute(INSERT_RECEIPT, params).first() is not None


def record_delivery(connection: Connection, event_id: UUID, consumer_id: UUID, status: str) -> None:
    """Move the event's delivery bookkeeping for a newly recorded receipt."""
    connection.execute(
        RECORD_DELIVERY, {"event_id": event_id, "consumer_id": consumer_id, "status": status}
    )


def event_delivery(connection: Connection, event_id: UUID, consumer_id: UUID) -> Row[Any] | None:
    """The tenant's event delivery state, or None when missing or foreign."""
    return connection.execute(
        EVENT_DELIVERY, {"event_id": event_id, "consumer_id": consumer_id}
    ).first()


def event_counts(connection: Connection, consumer_id: UUID | None) -> Sequence[Row[Any]]:
    """Events counted per type, publish status and delivery status (all or one consumer)."""
    return connection.execute(EVENT_COUNTS, {"consumer_id": consumer_id}).all()
