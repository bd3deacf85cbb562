"""SQL of customer_events, consumer_event_receipts and delivered_sequences: the outbox
insert, the delivery receipts, erasure's redaction and the tenant-scoped reads.

The relay's outbox SQL (pending heads, published / failed marks, also used by resend and
redeliver) is service/events/outbox.py. Also written elsewhere, one statement on purpose
(see docs/ARCHITECTURE.md): the customer insert with its event
(service/customers/repository.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import asyncpg
from sqlalchemy import Connection, Row, TextClause, text

from service.events.schemas import EventFilters
from service.kit.db_async import PooledConnection
from service.kit.request import EventOrigin

INSERT_EVENT = text(
    """
    INSERT INTO customer_events
        (customer_id, consumer_id, event_type, source_service, payload_json, metadata_json,
         publish_status, traceparent)
    VALUES
        (:customer_id, :consumer_id, :event_type, :source_service,
         CAST(:payload AS jsonb), CAST(:metadata AS jsonb), 'pending', :traceparent)
    RETURNING event_id
    """
)

# The one content change the append-only rule allows (migration 20261202_0710); served by
# ix_customer_events_customer_created.
REDACT_EVENT_PAYLOADS = text(
    """
    UPDATE customer_events SET payload_json = fintegrate_erased_payload()
    WHERE customer_id = :customer_id AND consumer_id = :consumer_id
      AND payload_json <> fintegrate_erased_payload()
    """
)

# Erasure against in-flight publishes (docs/RELIABILITY.md, "Erasure and the relay"): one
# advisory lock per customer. The erasure takes it exclusively; a publisher shares it from
# re-reading a wave's payloads until the broker has confirmed that wave.
# The key: hashtextextended('fintegrate:erasure:' || customer_id, 0), in both statements.
LOCK_CUSTOMER_AGAINST_PUBLISHES = text(
    "SELECT pg_advisory_xact_lock("
    "hashtextextended('fintegrate:erasure:' || CAST(:customer_id AS text), 0))"
)
SHARE_CUSTOMERS_WHILE_PUBLISHING = text(
    "SELECT count(pg_advisory_xact_lock_shared("
    "hashtextextended('fintegrate:erasure:' || customer, 0)))"
    " FROM unnest(CAST(:customer_ids AS text[])) AS customer"
)
# A statement of its own, after the locks: its snapshot sees an erasure that committed
# while they were awaited (each statement of a multi-statement string takes its own
# snapshot, so the two go in one round trip).
CURRENT_PAYLOADS = text(
    "SELECT event_id, payload_json FROM customer_events WHERE event_id = ANY(:event_ids)"
)
SHARE_CUSTOMERS_THEN_PAYLOADS = text(
    SHARE_CUSTOMERS_WHILE_PUBLISHING.text + "; " + CURRENT_PAYLOADS.text
)

# One statement: check ownership, insert the receipt once, and move the event only when the
# receipt is new. delivered is final: a later 'failed' receipt never downgrades it.
# asyncpg placeholders: $1 event_id, $2 consumer_id, $3 status, $4 detail. One statement:
# the receipt, the event's delivery state and its aggregate's last delivered sequence
# (delivered_sequences, which outlives archived partitions) commit together, on the event
# loop, in one round trip. ``e`` is the row as it was before this statement, so
# first_delivery says this receipt delivered it.
CONFIRM_DELIVERY = """
    WITH target AS (
        SELECT event_id, customer_id, sequence FROM customer_events
        WHERE event_id = $1 AND consumer_id = $2
    ), advanced AS (
        INSERT INTO delivered_sequences AS d (consumer_id, aggregate_id, sequence, event_id)
        SELECT $2, coalesce(customer_id, $2), sequence, event_id FROM target
        WHERE $3 <> 'failed'
        ON CONFLICT ON CONSTRAINT delivered_sequences_aggregate DO UPDATE
            SET sequence = EXCLUDED.sequence, event_id = EXCLUDED.event_id, updated_at = now()
            WHERE d.sequence < EXCLUDED.sequence
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
               AS deliver_try_count,
           e.created_at,
           e.delivered_at IS NULL AND m.delivered_at IS NOT NULL AS first_delivery
    FROM customer_events e LEFT JOIN moved m ON m.event_id = e.event_id
    WHERE e.event_id = $1 AND e.consumer_id = $2
    """

# An event as the tenant API returns it (schemas.EventOut): the one column list of the reads.
API_EVENT_COLUMNS = """
    event_id, customer_id, consumer_id, event_type, source_service,
    payload_json AS payload, metadata_json AS metadata,
    publish_status, publish_try_count, publish_failure_reason, published_at,
    deliver_status, deliver_try_count, delivered_at, created_at, sequence
"""


def _select_events(condition: str) -> TextClause:
    """``SELECT`` the API's event columns of customer_events ``WHERE condition``."""
    return text(f"SELECT {API_EVENT_COLUMNS} FROM customer_events WHERE {condition}")  # noqa: S608


SELECT_EVENT = _select_events("event_id = :event_id AND consumer_id = :consumer_id")

LIST_EVENTS = _select_events(
    """
    consumer_id = :consumer_id
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

# One aggregate's events after a sequence, in sequence order (the worker's recovery of what
# its queue lost). A customer's events come through ix_customer_events_customer_created,
# the consumer level's through ix_customer_events_consumer_level.
EVENTS_OF_CUSTOMER_AFTER = _select_events(
    """
    customer_id = :customer_id AND consumer_id = :consumer_id
      AND sequence > :after AND sequence <= :through
    ORDER BY sequence LIMIT :limit
    """
)
EVENTS_OF_CONSUMER_AFTER = _select_events(
    """
    consumer_id = :consumer_id AND customer_id IS NULL
      AND sequence > :after AND sequence <= :through
    ORDER BY sequence LIMIT :limit
    """
)

# A tenant's events published longer ago than a queue holds a message and still without a
# receipt: no longer in its queue. ix_customer_events_undelivered (published, not
# delivered rows only); created_at bounds the walk since an event is created before it is
# published.
LOST_EVENTS = _select_events(
    """
    consumer_id = :consumer_id
      AND publish_status = 'published' AND deliver_status = 'pending'
      AND created_at < now() - make_interval(secs => CAST(:older_than_ms AS float8) / 1000)
      AND published_at < now() - make_interval(secs => CAST(:older_than_ms AS float8) / 1000)
      AND (CAST(:after_at AS timestamptz) IS NULL
           OR (created_at, event_id)
              > (CAST(:after_at AS timestamptz), CAST(:after_id AS uuid)))
    ORDER BY created_at, event_id LIMIT :limit
    """
)


# The highest delivered sequence of a tenant's aggregates, from delivered_sequences (kept
# by CONFIRM_DELIVERY; it survives archived partitions). asyncpg placeholders: $1
# consumer_id, $2 aggregate_id (the customer_id, or the consumer_id for consumer-level
# events) or aggregate_ids.
LAST_DELIVERED_OF_AGGREGATE = """
    SELECT event_id, sequence FROM delivered_sequences
    WHERE aggregate_id = $2 AND consumer_id = $1
    """
LAST_DELIVERED_OF_CUSTOMERS_ASYNC = """
    SELECT aggregate_id AS customer_id, event_id, sequence FROM delivered_sequences
    WHERE aggregate_id = ANY($2::uuid[]) AND consumer_id = $1
    """

# The same for many aggregates of one tenant at once (DLQ replay): the customers given and
# the tenant's consumer-level aggregate.
LAST_DELIVERED_OF_AGGREGATES = text(
    """
    SELECT aggregate_id, sequence FROM delivered_sequences
    WHERE aggregate_id = ANY(CAST(:aggregate_ids AS uuid[])) AND consumer_id = :consumer_id
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
            "traceparent": origin.traceparent,
        },
    ).scalar_one()
    return event_id


def redact_customer_payloads(connection: Connection, consumer_id: UUID, customer_id: UUID) -> int:
    """Replace the payloads of the customer's events with the erased marker; returns how many."""
    params = {"consumer_id": consumer_id, "customer_id": customer_id}
    redacted: int = connection.execute(REDACT_EVENT_PAYLOADS, params).rowcount
    return redacted


def lock_customer_against_publishes(connection: Connection, customer_id: UUID) -> None:
    """Wait for in-flight publishes of the customer's events; new ones wait for the commit."""
    connection.execute(LOCK_CUSTOMER_AGAINST_PUBLISHES, {"customer_id": customer_id})


def current_payloads_of_publish(
    connection: Connection, customer_ids: list[str], event_ids: list[UUID]
) -> dict[UUID, Any]:
    """Share the customers' erasure locks (to the end of the transaction), then read the
    events' payloads as they are now."""
    params = {"customer_ids": sorted(customer_ids), "event_ids": event_ids}
    rows = connection.execute(SHARE_CUSTOMERS_THEN_PAYLOADS, params).all()
    return {row.event_id: row.payload_json for row in rows}


def current_payloads(connection: Connection, event_ids: list[UUID]) -> dict[UUID, Any]:
    """The events' payloads as they are now (a DLQ replay re-reads them: erasure)."""
    rows = connection.execute(CURRENT_PAYLOADS, {"event_ids": event_ids}).all()
    return {row.event_id: row.payload_json for row in rows}


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


def events_after(
    connection: Connection,
    consumer_id: UUID,
    customer_id: UUID | None,
    after: int,
    through: int,
    limit: int,
) -> Sequence[Row[Any]]:
    """The aggregate's events with ``after < sequence <= through``, in sequence order."""
    query = EVENTS_OF_CONSUMER_AFTER if customer_id is None else EVENTS_OF_CUSTOMER_AFTER
    params = {"consumer_id": consumer_id, "customer_id": customer_id, "after": after}
    return connection.execute(query, {**params, "through": through, "limit": limit}).all()


def lost_events(
    connection: Connection,
    consumer_id: UUID,
    older_than_ms: int,
    after: dict[str, Any],
    limit: int,
) -> Sequence[Row[Any]]:
    """The tenant's published, undelivered events older than ``older_than_ms``, oldest first,
    after the cursor position."""
    params = {"consumer_id": consumer_id, "older_than_ms": older_than_ms, "limit": limit}
    return connection.execute(LOST_EVENTS, {**params, **after}).all()


async def last_delivered(
    connection: PooledConnection, consumer_id: UUID, customer_id: UUID | None
) -> asyncpg.Record | None:
    """``event_id, sequence`` of the aggregate's last delivered event, or None."""
    aggregate_id = consumer_id if customer_id is None else customer_id
    return await connection.fetchrow(LAST_DELIVERED_OF_AGGREGATE, consumer_id, aggregate_id)


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
    aggregate_ids = [str(c) for c in customer_ids] + [str(consumer_id)]
    rows = connection.execute(
        LAST_DELIVERED_OF_AGGREGATES,
        {"consumer_id": consumer_id, "aggregate_ids": aggregate_ids},
    ).all()
    return {
        None if row.aggregate_id == consumer_id else row.aggregate_id: int(row.sequence)
        for row in rows
    }


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


# ``processed`` receipts for many events at once (the webhook channel records a batch of
# 2xx answers in one round trip): CONFIRM_DELIVERY's effects for each, the last delivered
# sequence raised once per aggregate, an event answered twice receipted once.
RECORD_PROCESSED = text(
    """
    WITH input AS (
        SELECT * FROM unnest(CAST(:event_ids AS uuid[]), CAST(:consumer_ids AS uuid[]),
                             CAST(:details AS text[])) AS i(event_id, consumer_id, detail)
    ), target AS (
        SELECT DISTINCT ON (e.event_id) e.event_id, e.consumer_id, e.customer_id,
               e.sequence, i.detail
        FROM customer_events e
        JOIN input i ON e.event_id = i.event_id AND e.consumer_id = i.consumer_id
        ORDER BY e.event_id
    ), advanced AS (
        INSERT INTO delivered_sequences AS d (consumer_id, aggregate_id, sequence, event_id)
        SELECT DISTINCT ON (consumer_id, coalesce(customer_id, consumer_id))
               consumer_id, coalesce(customer_id, consumer_id), sequence, event_id
        FROM target
        ORDER BY consumer_id, coalesce(customer_id, consumer_id), sequence DESC
        ON CONFLICT ON CONSTRAINT delivered_sequences_aggregate DO UPDATE
            SET sequence = EXCLUDED.sequence, event_id = EXCLUDED.event_id, updated_at = now()
            WHERE d.sequence < EXCLUDED.sequence
    ), receipt AS (
        INSERT INTO consumer_event_receipts (event_id, consumer_id, status, detail)
        SELECT event_id, consumer_id, 'processed', detail FROM target
        ON CONFLICT ON CONSTRAINT consumer_event_receipts_unique DO NOTHING
        RETURNING event_id
    )
    UPDATE customer_events e
    SET deliver_try_count = e.deliver_try_count + 1,
        deliver_status = 'delivered',
        delivered_at = coalesce(e.delivered_at, now())
    FROM receipt WHERE e.event_id = receipt.event_id
    """
)


def record_processed(connection: Connection, receipts: Sequence[tuple[UUID, UUID, str]]) -> None:
    """``processed`` receipts of (event_id, consumer_id, detail), in the caller's
    transaction, as ``confirm_delivery`` writes each."""
    if not receipts:
        return
    event_ids, consumer_ids, details = (list(column) for column in zip(*receipts, strict=True))
    params = {"event_ids": event_ids, "consumer_ids": consumer_ids, "details": details}
    connection.execute(RECORD_PROCESSED, params)


# -- the life of one event (``fintegrate events trace``), and recent delivery times --------

TRACED_EVENT = text(
    """
    SELECT event_id, customer_id, consumer_id, event_type, source_service,
           metadata_json AS metadata, traceparent, publish_status, publish_try_count,
           publish_failure_reason, published_at, next_attempt_at, deliver_status,
           deliver_try_count, delivered_at, created_at, sequence, now() AS read_at
    FROM customer_events WHERE event_id = CAST(:event_id AS uuid)
    """
)
EVENT_RECEIPTS = text(
    """
    SELECT status, detail, received_at FROM consumer_event_receipts
    WHERE event_id = CAST(:event_id AS uuid) ORDER BY received_at, status
    """
)
# The aggregate's events just before and after one sequence, and its first pending event
# before it (what holds it back); served by ix_customer_events_customer_created and
# ix_customer_events_consumer_level / ix_customer_events_pending_aggregate.
OF_CUSTOMER = "customer_id = CAST(:customer_id AS uuid)"
OF_CONSUMER = "consumer_id = CAST(:consumer_id AS uuid) AND customer_id IS NULL"
AGGREGATE_NEIGHBOURS = """
    SELECT event_id, sequence, event_type, publish_status, publish_failure_reason,
           next_attempt_at, deliver_status, created_at, 'neighbour' AS role
    FROM customer_events
    WHERE {aggregate} AND sequence IN (:sequence - 1, :sequence + 1)
    UNION ALL
    (SELECT event_id, sequence, event_type, publish_status, publish_failure_reason,
            next_attempt_at, deliver_status, created_at, 'first pending before it' AS role
     FROM customer_events
     WHERE publish_status = 'pending'
       AND coalesce(customer_id, consumer_id)
           = coalesce(CAST(:customer_id AS uuid), CAST(:consumer_id AS uuid))
       AND sequence < :sequence
     ORDER BY sequence LIMIT 1)
    ORDER BY sequence, role
    """
# Creation to first delivered receipt over the last :minutes minutes, walking the receipts'
# time index; only events created in the last day are looked up (partition pruning).
RECENT_DELIVERY_P99 = text(
    """
    SELECT count(*) AS delivered,
           percentile_cont(0.99) WITHIN GROUP (
               ORDER BY extract(epoch FROM e.delivered_at - e.created_at)) AS p99_seconds
    FROM consumer_event_receipts r
    JOIN customer_events e ON e.event_id = r.event_id AND e.delivered_at = r.received_at
    WHERE r.received_at >= now() - make_interval(mins => :minutes) AND r.status <> 'failed'
      AND e.created_at >= now() - interval '1 day'
    """
)


def traced_event(connection: Connection, event_id: UUID) -> Row[Any] | None:
    """Any tenant's event with its bookkeeping (operators only), or None."""
    return connection.execute(TRACED_EVENT, {"event_id": event_id}).first()


def event_receipts(connection: Connection, event_id: UUID) -> Sequence[Row[Any]]:
    """The event's receipts, oldest first."""
    return connection.execute(EVENT_RECEIPTS, {"event_id": event_id}).all()


def aggregate_neighbours(connection: Connection, event: Row[Any]) -> Sequence[Row[Any]]:
    """The events beside ``event`` in its aggregate and its first earlier pending one."""
    params = {
        "consumer_id": event.consumer_id,
        "customer_id": event.customer_id,
        "sequence": event.sequence,
    }
    aggregate = OF_CONSUMER if event.customer_id is None else OF_CUSTOMER
    statement = text(AGGREGATE_NEIGHBOURS.format(aggregate=aggregate))
    return connection.execute(statement, params).all()


def recent_delivery_p99(connection: Connection, minutes: int) -> Row[Any]:
    """``delivered`` count and ``p99_seconds`` (None when none) of the last ``minutes``."""
    return connection.execute(RECENT_DELIVERY_P99, {"minutes": minutes}).one()
