"""Customer rules: tenant-scoped changes, each committed with its outbox event row.

Services only execute on the request's connection; the ``DbSession`` dependency commits.
Creation is the exception: it runs on the event loop (asyncpg) as one self-committing
statement. Changing a customer to the status it already has answers the customer unchanged and
writes no event.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
from sqlalchemy import Connection, Row

from service.customers import repository
from service.customers.schemas import (
    MAX_TAGS,
    AnalyticsIn,
    AnalyticsOut,
    CustomerCreate,
    CustomerDeleted,
    CustomerOut,
    TagsOut,
)
from service.events.repository import insert_event
from service.kit.db_async import PooledConnection, pooled_connection
from service.kit.errors import Conflict, NotFound, Unprocessable
from service.kit.pagination import build_page, cursor_params, decode_cursor
from service.kit.request import EventOrigin

CUSTOMER_NOT_FOUND = "Customer not found"
IDEMPOTENCY_HOURS = 24
IDEMPOTENCY_ATTEMPTS = 2
IDEMPOTENCY_MISMATCH = (
    "Idempotency-Key was already used with a different request body; "
    "use a new key for a new customer"
)
IDEMPOTENCY_BUSY = "Idempotency-Key is being used by a concurrent request; retry shortly"
TAG_NOT_FOUND = "Tag not found"


def require_customer(
    connection: Connection, consumer_id: UUID, customer_id: UUID, *, lock: bool = False
) -> Row[Any]:
    """The tenant's live customer; NotFound alike for missing, deleted or foreign ids."""
    row = repository.get_customer(connection, consumer_id, customer_id, lock=lock)
    if row is None:
        raise NotFound(CUSTOMER_NOT_FOUND)
    return row


async def create_customer(
    pool: asyncpg.Pool,
    consumer_id: UUID,
    data: CustomerCreate,
    origin: EventOrigin,
    idempotency_key: str | None = None,
) -> tuple[CustomerOut, bool]:
    """Insert the customer and its ``customer_creation`` event (one statement, one commit).

    With ``idempotency_key`` a repeat of the same request within ``IDEMPOTENCY_HOURS``
    answers the first customer again and writes nothing; returns (customer, replayed).
    """
    key = None
    if idempotency_key is not None:
        key = repository.IdempotencyKey(
            idempotency_key, request_fingerprint(data), IDEMPOTENCY_HOURS
        )
    fields, metadata = data.model_dump(), {"request_id": origin.request_id}
    async with pooled_connection(pool) as connection:
        for _ in range(IDEMPOTENCY_ATTEMPTS):
            try:
                row = await repository.insert_customer_with_event(
                    connection,
                    consumer_id,
                    fields,
                    origin.source_service,
                    metadata,
                    key,
                    origin.traceparent,
                )
                return CustomerOut.model_validate(dict(row)), False
            except asyncpg.UniqueViolationError as exc:
                if key is None or exc.constraint_name != repository.IDEMPOTENCY_KEY_CONSTRAINT:
                    raise
            replay = await stored_answer(connection, consumer_id, key)
            if replay is not None:
                return replay, True
    raise Conflict(IDEMPOTENCY_BUSY)


async def stored_answer(
    connection: PooledConnection, consumer_id: UUID, key: repository.IdempotencyKey
) -> CustomerOut | None:
    """The first answer for ``key``; None when it expired (now forgotten) or vanished."""
    stored = await repository.find_idempotency_key(connection, consumer_id, key)
    if stored is None:
        return None
    if stored["expired"]:
        await repository.delete_expired_idempotency_key(connection, consumer_id, key)
        return None
    if stored["request_fingerprint"] != key.fingerprint:
        raise Conflict(IDEMPOTENCY_MISMATCH)
    return CustomerOut.model_validate_json(stored["response_json"])


def request_fingerprint(data: CustomerCreate) -> str:
    """What makes two creates the same request: the validated body, defaults applied."""
    return hashlib.sha256(data.model_dump_json().encode()).hexdigest()


def list_customers(
    connection: Connection, consumer_id: UUID, status: str | None, cursor: str | None, limit: int
) -> dict[str, Any]:
    """One page of the tenant's live customers, oldest first."""
    after = cursor_params(decode_cursor(cursor))
    rows = repository.list_customers(connection, consumer_id, status, after, limit + 1)
    customers = [CustomerOut.model_validate(row._mapping) for row in rows]
    return build_page(customers, limit, lambda item: (item.created_at, item.customer_id))


def get_customer(connection: Connection, consumer_id: UUID, customer_id: UUID) -> CustomerOut:
    return CustomerOut.model_validate(
        require_customer(connection, consumer_id, customer_id)._mapping
    )


def change_status(
    connection: Connection,
    consumer_id: UUID,
    customer_id: UUID,
    new_status: str,
    origin: EventOrigin,
) -> CustomerOut:
    """Set the status and record ``customer_status_change``; a no-op when unchanged."""
    current = require_customer(connection, consumer_id, customer_id, lock=True)
    if current.status == new_status:
        return CustomerOut.model_validate(current._mapping)
    updated = repository.update_status(connection, consumer_id, customer_id, new_status)
    insert_event(
        connection,
        consumer_id=consumer_id,
        customer_id=customer_id,
        event_type="customer_status_change",
        origin=origin,
        payload={
            "customer_id": str(customer_id),
            "old_status": current.status,
            "new_status": new_status,
        },
    )
    return CustomerOut.model_validate(updated._mapping)


def delete_customer(
    connection: Connection, consumer_id: UUID, customer_id: UUID, origin: EventOrigin
) -> CustomerDeleted:
    """Soft-delete the customer and record ``customer_deletion``."""
    current = require_customer(connection, consumer_id, customer_id, lock=True)
    deleted = CustomerDeleted.model_validate(
        repository.soft_delete(connection, consumer_id, customer_id)._mapping
    )
    insert_event(
        connection,
        consumer_id=consumer_id,
        customer_id=customer_id,
        event_type="customer_deletion",
        origin=origin,
        payload={
            "customer_id": str(customer_id),
            "name": current.name,
            "deleted_at": deleted.deleted_at.isoformat(),
        },
    )
    return deleted


def merge_tags(
    connection: Connection, consumer_id: UUID, customer_id: UUID, tags: dict[str, Any]
) -> TagsOut:
    """Upsert ``tags`` into the customer's tags; the whole map after the merge."""
    require_customer(connection, consumer_id, customer_id, lock=True)
    repository.upsert_tags(connection, consumer_id, customer_id, tags)
    merged = repository.get_tags(connection, consumer_id, customer_id)
    if len(merged) > MAX_TAGS:
        raise Unprocessable(f"A customer holds at most {MAX_TAGS} tags; delete some first")
    return TagsOut(customer_id=customer_id, tags=merged)


def get_tags(connection: Connection, consumer_id: UUID, customer_id: UUID) -> TagsOut:
    require_customer(connection, consumer_id, customer_id)
    return TagsOut(
        customer_id=customer_id, tags=repository.get_tags(connection, consumer_id, customer_id)
    )


def delete_tag(connection: Connection, consumer_id: UUID, customer_id: UUID, key: str) -> TagsOut:
    """Remove one tag; NotFound when the customer has no such tag."""
    require_customer(connection, consumer_id, customer_id, lock=True)
    if not repository.delete_tag(connection, consumer_id, customer_id, key):
        raise NotFound(TAG_NOT_FOUND)
    return get_tags(connection, consumer_id, customer_id)


def add_analytics(
    connection: Connection, consumer_id: UUID, customer_id: UUID, data: AnalyticsIn
) -> AnalyticsOut:
    """Store one metrics snapshot (``recorded_at`` defaults to now)."""
    require_customer(connection, consumer_id, customer_id)
    row = repository.insert_analytics(
        connection, consumer_id, customer_id, data.metrics, data.recorded_at
    )
    return AnalyticsOut.model_validate(row._mapping)


def list_analytics(
    connection: Connection,
    consumer_id: UUID,
    customer_id: UUID,
    window: tuple[datetime | None, datetime | None],
    page: tuple[str | None, int],
) -> dict[str, Any]:
    """Snapshots recorded within ``window`` (inclusive), oldest first, one page."""
    require_customer(connection, consumer_id, customer_id)
    cursor, limit = page
    after = cursor_params(decode_cursor(cursor))
    rows = repository.list_analytics(connection, consumer_id, customer_id, window, after, limit + 1)
    snapshots = [AnalyticsOut.model_validate(row._mapping) for row in rows]
    return build_page(snapshots, limit, lambda item: (item.recorded_at, item.analytics_id))
