"""SQL of the delivery domain: the republish selection and the tenants' republish budgets.

The republish_budgets table is owned here. The selection only reads customer_events (owner:
service/events/repository.py, which holds every write of it, the delivery receipts too) and
joins consumers for the names (owner: service/consumers/repository.py): one statement each,
since the filters, the cursor and the "blocked" rule are delivery's and must run together.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Row, text

from service.delivery.schemas import Selection
from service.events.outbox import MESSAGE_COLUMNS

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
SELECT_RUNS = (
    f"SELECT {MESSAGE_COLUMNS}, {{blocked}} AS blocked"  # noqa: S608 - constant column list
    """
    FROM customer_events e LEFT JOIN consumers c ON c.consumer_id = e.consumer_id
    WHERE {kind} {filters} {after}
    ORDER BY {aggregate}, e.sequence
    LIMIT :limit
"""
)
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
