"""Event counts from maintained counters (migration 20261202_0701), never a table scan.

Statement triggers on customer_events append signed deltas to customer_event_counts;
``fintegrate_compact_event_counts()`` folds them, so a read sums a few rows per group.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Row, text

COMPACT = text("SELECT fintegrate_compact_event_counts()")
EVENT_COUNTS = text(
    """
    SELECT event_type, publish_status, deliver_status, sum(events)::bigint AS count
    FROM customer_event_counts
    WHERE (CAST(:consumer_id AS uuid) IS NULL OR consumer_id = CAST(:consumer_id AS uuid))
    GROUP BY event_type, publish_status, deliver_status
    HAVING sum(events) <> 0
    ORDER BY event_type, publish_status, deliver_status
    """
)
PENDING_EVENTS = text(
    "SELECT coalesce(sum(events), 0)::bigint FROM customer_event_counts"
    " WHERE publish_status = 'pending'"
)
# The archive's bookkeeping: a dropped partition's rows leave the counts in the same
# transaction (:counts is a JSON array of {consumer_id, event_type, ..., count}).
SUBTRACT = text(
    """
    INSERT INTO customer_event_counts
        (consumer_id, event_type, publish_status, deliver_status, events)
    SELECT c.consumer_id, c.event_type, c.publish_status, c.deliver_status, -c.count
    FROM jsonb_to_recordset(CAST(:counts AS jsonb)) AS c(
        consumer_id uuid, event_type text, publish_status text, deliver_status text,
        count bigint)
    """
)


def compact_counts(connection: Connection) -> int:
    """Fold the deltas written since the last compaction; returns how many rows went."""
    folded: int = connection.execute(COMPACT).scalar_one()
    return folded


def event_counts(connection: Connection, consumer_id: UUID | None) -> Sequence[Row[Any]]:
    """Events per type, publish status and delivery status (all consumers or one)."""
    return connection.execute(EVENT_COUNTS, {"consumer_id": consumer_id}).all()


def subtract_counts(connection: Connection, counts_json: str) -> None:
    """Take a dropped partition's per-group counts out of the totals."""
    connection.execute(SUBTRACT, {"counts": counts_json})


def pending_events(connection: Connection) -> int:
    """Events waiting to be published, from the counters (compacted or not)."""
    pending: int = connection.execute(PENDING_EVENTS).scalar_one()
    return pending
