"""SQL of the delivery domain: republish selections and delivery receipts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

import asyncpg
from sqlalchemy import Connection, Row, text

from service.delivery.schemas import Selection
from service.kit.db_async import PooledConnection

AGGREGATE = "coalesce({a}.customer_id, {a}.consumer_id)"
# resend: events still waiting to be published; redeliver: published, not yet delivered.
KIND_CONDITION = {
    "resend": "{a}.publish_status = 'pending'",
    "redeliver": "{a}.publish_status = 'published' AND {a}.deliver_status <> 'delivered'",
}

FILTERS = """
    AND {a}.created_at >= now() - make_interval(days => :period_in_days)
    AND (CAST(:max_try_count AS integer) IS NULL OR {a}.publish_try_count < :max_try_count)
    AND (CAST(:event_types AS text[]) IS NULL
         OR {a}.event_type = ANY(CAST(:event_types AS text[])))
    AND (CAST(:consumer_id AS uuid) IS NULL OR {a}.consumer_id = CAST(:consumer_id AS uuid))
"""
AFTER_CURSOR = """
    AND (CAST(:after_aggregate AS uuid) IS NULL
         OR ({aggregate}, {a}.sequence)
            > (CAST(:after_aggregate AS uuid), CAST(:after_sequence AS bigint)))
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
    ORDER BY {aggregate}, e.sequence
    LIMIT :limit
"""

# The next chunk in aggregate order, without row locks. For resend an event is "blocked"
# when an earlier pending event of its aggregate is outside this selection (filtered out,
# or before the cursor and still pending): publishing it would overtake that event.
SELECT_RUNS = """
    SELECT e.event_id, e.customer_id, e.consumer_id, e.event_type, e.payload_json,
           e.metadata_json, e.created_at, e.publish_try_count, e.sequence,
           {aggregate} AS aggregate_id, c.name AS consumer_name, {blocked} AS blocked
    FROM customer_events e LEFT JOIN consumers c ON c.consumer_id = e.consumer_id
    WHERE {kind} {filters} {after}
    ORDER BY {aggregate}, e.sequence
    LIMIT :limit
"""
BLOCKED = {
    "resend": """EXISTS (
        SELECT 1 FROM customer_events b
        WHERE b.publish_status = 'pending'
          AND coalesce(b.customer_id, b.consumer_id) = coalesce(e.customer_id, e.consumer_id)
          AND b.sequence < e.sequence
          AND NOT (TRUE {filters_b} {after_b}))""",
    "redeliver": "false",
}

# A tenant's republish allowance: a token bucket per consumer in PostgreSQL (shared by
# every API instance, no Redis needed). Refilled at :per_second up to :capacity.
REFILL_BUDGET = text(
    """
    INSERT INTO republish_budgets AS b (consumer_id, tokens, refilled_at)
    VALUES (:consumer_id, :capacity, now())
    ON CONFLICT (consumer_id) DO UPDATE
    SET tokens = LEAST(CAST(:capacity AS float8),
                       b.tokens + extract(epoch FROM now() - b.refilled_at) * :per_second),
        refilled_at = now()
    RETURNING tokens
    """
)
SPEND_BUDGET = text(
    "UPDATE republish_budgets SET tokens = tokens - :spent WHERE consumer_id = :consumer_id"
)

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


def _sql(template: str, kind: str) -> Any:
    aggregate_e, aggregate_b = AGGREGATE.format(a="e"), AGGREGATE.format(a="b")
    blocked = BLOCKED[kind].format(
        filters_b=FILTERS.format(a="b"),
        after_b=AFTER_CURSOR.format(a="b", aggregate=aggregate_b),
    )
    return text(
        template.format(
            kind=KIND_CONDITION[kind].format(a="e"),
            filters=FILTERS.format(a="e"),
            after=AFTER_CURSOR.format(a="e", aggregate=aggregate_e),
            aggregate=aggregate_e,
            blocked=blocked,
        )
    )


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
    """The ids of the first ``limit`` matching events, in aggregate order."""
    params = {**_params(selection), "limit": limit}
    return list(connection.execute(_sql(SELECT_IDS, kind), params).scalars())


def select_runs(
    connection: Connection, kind: str, selection: Selection, after: dict[str, Any], limit: int
) -> Sequence[Row[Any]]:
    """Up to ``limit`` matching events after the cursor, by aggregate then sequence."""
    params = {**_params(selection), **after, "limit": limit}
    return connection.execute(_sql(SELECT_RUNS, kind), params).all()


def take_budget(connection: Connection, consumer_id: UUID, capacity: int, per_minute: int) -> float:
    """Refill the tenant's republish allowance and return it (locked until commit)."""
    params = {"consumer_id": consumer_id, "capacity": capacity, "per_second": per_minute / 60}
    return float(connection.execute(REFILL_BUDGET, params).scalar_one())


def spend_budget(connection: Connection, consumer_id: UUID, spent: int) -> None:
    if spent:
        connection.execute(SPEND_BUDGET, {"consumer_id": consumer_id, "spent": spent})


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
