"""SQL of the customers domain; every statement filters by the tenant's consumer_id."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
from pydantic_core import to_json
from sqlalchemy import Connection, Row, text

from service.kit.db_async import PooledConnection

# The customer and its customer_creation event in one statement (one round trip, one
# transaction): the hottest write of the API, and the event can never miss its change.
# The one write of customer_events outside its owner (service/events/repository.py), kept
# here for that reason; the columns it fills are those of events.repository.INSERT_EVENT.
# asyncpg placeholders: $1 consumer_id, $2 name, $3 email, $4 status, $5 source_service,
# $6 metadata (JSON text), $7 traceparent (the request span's, NULL when tracing is off);
# with an idempotency key also $8 the key, $9 its fingerprint, $10 the hours a key holds.
CUSTOMER_AND_EVENT = """
    WITH customer AS (
        INSERT INTO customers (consumer_id, name, email, status)
        VALUES ($1, $2, $3, $4)
        RETURNING customer_id, consumer_id, name, email, status, created_at, updated_at
    ), event AS (
        INSERT INTO customer_events
            (customer_id, consumer_id, event_type, source_service, payload_json,
             metadata_json, publish_status, traceparent)
        SELECT customer_id, consumer_id, 'customer_creation', $5,
               jsonb_build_object('customer_id', customer_id, 'name', name,
                                  'email', email, 'status', status),
               $6::jsonb, 'pending', $7
        FROM customer
        RETURNING event_id
    )"""
CUSTOMER_AND_EVENT_RESULT = """
    SELECT customer.customer_id, name, email, status, created_at, updated_at, event_id
    FROM customer, event
"""
INSERT_CUSTOMER_WITH_EVENT = CUSTOMER_AND_EVENT + CUSTOMER_AND_EVENT_RESULT
# The same, plus the idempotency key row holding the answer for replays. A key already
# stored for the tenant fails the whole statement (idempotency_keys_tenant_key): nothing is
# written, and the caller reads the stored answer instead.
INSERT_CUSTOMER_WITH_EVENT_AND_KEY = (
    CUSTOMER_AND_EVENT  # noqa: S608 (constants only)
    + """, idempotency AS (
        INSERT INTO idempotency_keys
            (consumer_id, idempotency_key, request_fingerprint, customer_id, response_json)
        SELECT consumer_id, $8, $9, customer_id,
               jsonb_build_object('customer_id', customer_id, 'name', name, 'email', email,
                                  'status', status, 'created_at', created_at,
                                  'updated_at', updated_at)
        FROM customer
    ), purge AS (
        DELETE FROM idempotency_keys
        WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM idempotency_keys
            WHERE created_at < now() - make_interval(hours => $10)
            LIMIT 10 FOR UPDATE SKIP LOCKED))
    )"""
    + CUSTOMER_AND_EVENT_RESULT
)
IDEMPOTENCY_KEY_CONSTRAINT = "idempotency_keys_tenant_key"
SELECT_IDEMPOTENCY_KEY = """
    SELECT request_fingerprint, response_json::text AS response_json,
           created_at < now() - make_interval(hours => $3) AS expired
    FROM idempotency_keys
    WHERE consumer_id = $1 AND idempotency_key = $2
"""
DELETE_EXPIRED_IDEMPOTENCY_KEY = """
    DELETE FROM idempotency_keys
    WHERE consumer_id = $1 AND idempotency_key = $2
      AND created_at < now() - make_interval(hours => $3)
"""
SELECT_CUSTOMER = text(
    """
    SELECT customer_id, name, email, status, created_at, updated_at
    FROM customers
    WHERE customer_id = :customer_id AND consumer_id = :consumer_id AND deleted_at IS NULL
    """
)
LOCK_CUSTOMER = text(SELECT_CUSTOMER.text + " FOR UPDATE")
LIST_CUSTOMERS = text(
    """
    SELECT customer_id, name, email, status, created_at, updated_at
    FROM customers
    WHERE consumer_id = :consumer_id AND deleted_at IS NULL
      AND (CAST(:status AS text) IS NULL OR status = :status)
      AND (CAST(:after_at AS timestamptz) IS NULL
           OR (created_at, customer_id)
              > (CAST(:after_at AS timestamptz), CAST(:after_id AS uuid)))
    ORDER BY created_at, customer_id
    LIMIT :limit
    """
)
UPDATE_STATUS = text(
    """
    UPDATE customers SET status = :status
    WHERE customer_id = :customer_id AND consumer_id = :consumer_id AND deleted_at IS NULL
    RETURNING customer_id, name, email, status, created_at, updated_at
    """
)
SOFT_DELETE = text(
    """
    UPDATE customers SET deleted_at = now()
    WHERE customer_id = :customer_id AND consumer_id = :consumer_id AND deleted_at IS NULL
    RETURNING customer_id, deleted_at
    """
)
# Erasure: the customer row whether deleted or not, locked; then every personal field.
LOCK_CUSTOMER_FOR_ERASURE = text(
    """
    SELECT customer_id, erased_at FROM customers
    WHERE customer_id = :customer_id AND consumer_id = :consumer_id
    FOR UPDATE
    """
)
# The erasure waits this long for a lock (a publish in flight, an archive's freeze), then 503.
LOCAL_LOCK_TIMEOUT = text("SELECT set_config('lock_timeout', :timeout, true)")
ERASED_NAME = "[erased]"
ERASE_CUSTOMER = text(
    """
    UPDATE customers SET name = :erased_name, email = NULL, erased_at = now()
    WHERE customer_id = :customer_id AND consumer_id = :consumer_id
    RETURNING erased_at
    """
)
ERASE_TAGS = text(
    "DELETE FROM customer_tags WHERE customer_id = :customer_id AND consumer_id = :consumer_id"
)
ERASE_ANALYTICS = text(
    "DELETE FROM customer_analytics WHERE customer_id = :customer_id AND consumer_id = :consumer_id"
)
# The stored answers of POST /customer/data replays carry the name and email.
ERASE_IDEMPOTENCY_ANSWERS = text(
    "DELETE FROM idempotency_keys WHERE customer_id = :customer_id AND consumer_id = :consumer_id"
)
UPSERT_TAGS = text(
    """
    INSERT INTO customer_tags (customer_id, consumer_id, tag_key, tag_value)
    SELECT :customer_id, :consumer_id, key, value FROM jsonb_each(CAST(:tags AS jsonb))
    ON CONFLICT (customer_id, tag_key) DO UPDATE SET tag_value = EXCLUDED.tag_value
    """
)
SELECT_TAGS = text(
    "SELECT tag_key, tag_value FROM customer_tags"
    " WHERE customer_id = :customer_id AND consumer_id = :consumer_id ORDER BY tag_key"
)
DELETE_TAG = text(
    "DELETE FROM customer_tags"
    " WHERE customer_id = :customer_id AND consumer_id = :consumer_id AND tag_key = :tag_key"
)
INSERT_ANALYTICS = text(
    """
    INSERT INTO customer_analytics (customer_id, consumer_id, metrics_json, recorded_at)
    VALUES (:customer_id, :consumer_id, CAST(:metrics AS jsonb),
            COALESCE(CAST(:recorded_at AS timestamptz), now()))
    RETURNING analytics_id, customer_id, metrics_json AS metrics, recorded_at, created_at
    """
)
LIST_ANALYTICS = text(
    """
    SELECT analytics_id, customer_id, metrics_json AS metrics, recorded_at, created_at
    FROM customer_analytics
    WHERE customer_id = :customer_id AND consumer_id = :consumer_id
      AND (CAST(:from_at AS timestamptz) IS NULL OR recorded_at >= :from_at)
      AND (CAST(:to_at AS timestamptz) IS NULL OR recorded_at <= :to_at)
      AND (CAST(:after_at AS timestamptz) IS NULL
           OR (recorded_at, analytics_id)
              > (CAST(:after_at AS timestamptz), CAST(:after_id AS uuid)))
    ORDER BY recorded_at, analytics_id
    LIMIT :limit
    """
)


@dataclass(frozen=True)
class IdempotencyKey:
    """A client's Idempotency-Key, the fingerprint of its request and how long it holds."""

    value: str
    fingerprint: str
    hours: int


async def insert_customer_with_event(
    connection: PooledConnection,
    consumer_id: UUID,
    fields: dict[str, Any],
    source_service: str,
    metadata: dict[str, Any],
    key: IdempotencyKey | None = None,
    traceparent: str | None = None,
) -> asyncpg.Record:
    """Insert a customer and its pending event (and the key's row) in one statement.

    Raises ``asyncpg.UniqueViolationError`` on ``IDEMPOTENCY_KEY_CONSTRAINT`` when the
    tenant already stored ``key``.
    """
    values = (
        consumer_id,
        fields["name"],
        fields["email"],
        fields["status"],
        source_service,
        to_json(metadata).decode(),
        traceparent,
    )
    if key is None:
        row = await connection.fetchrow(INSERT_CUSTOMER_WITH_EVENT, *values)
    else:
        row = await connection.fetchrow(
            INSERT_CUSTOMER_WITH_EVENT_AND_KEY, *values, key.value, key.fingerprint, key.hours
        )
    assert row is not None, "an INSERT ... RETURNING answers its row"
    return row


async def find_idempotency_key(
    connection: PooledConnection, consumer_id: UUID, key: IdempotencyKey
) -> asyncpg.Record | None:
    """The stored key: fingerprint, answer (JSON text) and whether it has expired."""
    return await connection.fetchrow(SELECT_IDEMPOTENCY_KEY, consumer_id, key.value, key.hours)


async def delete_expired_idempotency_key(
    connection: PooledConnection, consumer_id: UUID, key: IdempotencyKey
) -> None:
    """Forget ``key`` if it has expired, so it can be used again."""
    await connection.execute(DELETE_EXPIRED_IDEMPOTENCY_KEY, consumer_id, key.value, key.hours)


def get_customer(
    connection: Connection, consumer_id: UUID, customer_id: UUID, *, lock: bool = False
) -> Row[Any] | None:
    """A live (not deleted) customer of the tenant, optionally locked for update."""
    statement = LOCK_CUSTOMER if lock else SELECT_CUSTOMER
    params = {"consumer_id": consumer_id, "customer_id": customer_id}
    return connection.execute(statement, params).first()


def list_customers(
    connection: Connection,
    consumer_id: UUID,
    status: str | None,
    after: dict[str, Any],
    limit: int,
) -> Sequence[Row[Any]]:
    params = {"consumer_id": consumer_id, "status": status, "limit": limit, **after}
    return connection.execute(LIST_CUSTOMERS, params).all()


def update_status(
    connection: Connection, consumer_id: UUID, customer_id: UUID, status: str
) -> Row[Any]:
    params = {"consumer_id": consumer_id, "customer_id": customer_id, "status": status}
    return connection.execute(UPDATE_STATUS, params).one()


def soft_delete(connection: Connection, consumer_id: UUID, customer_id: UUID) -> Row[Any]:
    params = {"consumer_id": consumer_id, "customer_id": customer_id}
    return connection.execute(SOFT_DELETE, params).one()


def upsert_tags(
    connection: Connection, consumer_id: UUID, customer_id: UUID, tags: dict[str, Any]
) -> None:
    params = {"consumer_id": consumer_id, "customer_id": customer_id, "tags": json.dumps(tags)}
    connection.execute(UPSERT_TAGS, params)


def get_tags(connection: Connection, consumer_id: UUID, customer_id: UUID) -> dict[str, Any]:
    params = {"consumer_id": consumer_id, "customer_id": customer_id}
    return {row.tag_key: row.tag_value for row in connection.execute(SELECT_TAGS, params)}


def delete_tag(connection: Connection, consumer_id: UUID, customer_id: UUID, key: str) -> bool:
    """True when the tag existed and was removed."""
    params = {"consumer_id": consumer_id, "customer_id": customer_id, "tag_key": key}
    return connection.execute(DELETE_TAG, params).rowcount > 0


def insert_analytics(
    connection: Connection,
    consumer_id: UUID,
    customer_id: UUID,
    metrics: dict[str, Any],
    recorded_at: datetime | None,
) -> Row[Any]:
    params = {
        "consumer_id": consumer_id,
        "customer_id": customer_id,
        "metrics": json.dumps(metrics),
        "recorded_at": recorded_at,
    }
    return connection.execute(INSERT_ANALYTICS, params).one()


def list_analytics(
    connection: Connection,
    consumer_id: UUID,
    customer_id: UUID,
    window: tuple[datetime | None, datetime | None],
    after: dict[str, Any],
    limit: int,
) -> Sequence[Row[Any]]:
    params = {
        "consumer_id": consumer_id,
        "customer_id": customer_id,
        "from_at": window[0],
        "to_at": window[1],
        "limit": limit,
        **after,
    }
    return connection.execute(LIST_ANALYTICS, params).all()


def wait_for_locks_at_most(connection: Connection, milliseconds: int) -> None:
    """Bound every lock wait of the rest of this transaction (``lock_timeout``)."""
    connection.execute(LOCAL_LOCK_TIMEOUT, {"timeout": f"{milliseconds}ms"})


def lock_for_erasure(
    connection: Connection, consumer_id: UUID, customer_id: UUID
) -> Row[Any] | None:
    """The tenant's customer, deleted or not, locked; None when missing or foreign."""
    params = {"consumer_id": consumer_id, "customer_id": customer_id}
    return connection.execute(LOCK_CUSTOMER_FOR_ERASURE, params).first()


@dataclass(frozen=True)
class ErasureCounts:
    """Rows an erasure removed or redacted."""

    erased_at: datetime
    tags: int
    analytics: int
    idempotency_keys: int


def erase_customer(connection: Connection, consumer_id: UUID, customer_id: UUID) -> ErasureCounts:
    """Redact the customer's row, tags, analytics and stored answers, in the caller's transaction.

    Its events' payloads are redacted by ``service.events.repository.redact_customer_payloads``.
    """
    params = {"consumer_id": consumer_id, "customer_id": customer_id}
    erased_at = connection.execute(
        ERASE_CUSTOMER, {**params, "erased_name": ERASED_NAME}
    ).scalar_one()
    return ErasureCounts(
        erased_at=erased_at,
        tags=connection.execute(ERASE_TAGS, params).rowcount,
        analytics=connection.execute(ERASE_ANALYTICS, params).rowcount,
        idempotency_keys=connection.execute(ERASE_IDEMPOTENCY_ANSWERS, params).rowcount,
    )
