"""Erasure (SPEC 4.3): the customer's personal data, wherever Fintegrate keeps it.

In one transaction: lock the customer row, redact the customer's dead letters in the
tenant's DLQ, then wait for any publish of its events in flight (the erasure fence,
``service.events.erasure_fence``), redact the customer, its tags, analytics, stored
idempotent answers and event payloads, record ``customer_erasure`` and audit it. Any step
that cannot complete answers 503 and nothing is erased in the database (the transaction
rolls back); the erasure is idempotent, so the client retries. What it cannot reach is
listed in docs/RELIABILITY.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from uuid import UUID

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from service.customers import repository
from service.customers.schemas import CustomerErased
from service.events.partitions import FREEZE_CONSTRAINT
from service.events.repository import (
    insert_event,
    lock_customer_against_publishes,
    redact_customer_payloads,
)
from service.http.audit import AuditEntry, write_audit_in
from service.kit.errors import NotFound, ServiceUnavailable
from service.kit.request import EventOrigin
from service.messaging.connection import BrokerUnavailable

CUSTOMER_NOT_FOUND = "Customer not found"
LOCK_WAIT_MS = 3000
LOCK_NOT_AVAILABLE = "55P03"
CHECK_VIOLATION = "23514"
BUSY = (
    "The customer's events are busy (a publish in flight or an archive holding their "
    "partition); the customer was not erased. Retry in a few seconds"
)
FROZEN = (
    "Some of the customer's events are in a partition frozen for archiving; the customer "
    "was not erased. Retry once the archive has finished (a freeze left by a stopped archive is "
    "undone by the next `fintegrate events archive` run)"
)
BROKER_AWAY = (
    "The customer's dead letters could not be redacted ({reason}); nothing was erased. "
    "Retry once RabbitMQ is reachable"
)

DeadLetterEraser = Callable[[UUID], int]  # customer_id -> dead letters redacted
T = TypeVar("T")


def erase_customer(
    connection: Connection,
    consumer_id: UUID,
    customer_id: UUID,
    origin: EventOrigin,
    dead_letters: DeadLetterEraser,
) -> CustomerErased:
    """Redact the customer everywhere, audit it and record ``customer_erasure``.

    Works on deleted customers too; a second erasure changes nothing in the database and
    writes no event, but sweeps the DLQ again (a letter dead-lettered since is redacted).
    The DLQ is swept before the erasure fence is taken, so relays wait only for the short
    database part.
    """
    current = _guarded(lambda: _lock_customer(connection, consumer_id, customer_id))
    if current is None:
        raise NotFound(CUSTOMER_NOT_FOUND)
    try:
        letters = dead_letters(customer_id)
    except BrokerUnavailable as exc:
        raise ServiceUnavailable(BROKER_AWAY.format(reason=exc), {"Retry-After": "5"}) from None
    if current.erased_at is not None:
        return CustomerErased(
            customer_id=customer_id,
            erased_at=current.erased_at,
            already_erased=True,
            tags_removed=0,
            analytics_removed=0,
            idempotency_keys_removed=0,
            events_redacted=0,
            dead_letters_redacted=letters,
            event_id=None,
        )
    erased = _guarded(lambda: _erase_rows(connection, consumer_id, customer_id, origin))
    erased.dead_letters_redacted = letters
    write_audit_in(connection, erasure_audit(consumer_id, origin, erased))
    return erased


def _lock_customer(connection: Connection, consumer_id: UUID, customer_id: UUID) -> Any:
    """The customer row, locked; every later lock wait of the erasure is bounded."""
    repository.wait_for_locks_at_most(connection, LOCK_WAIT_MS)
    return repository.lock_for_erasure(connection, consumer_id, customer_id)


def _erase_rows(
    connection: Connection, consumer_id: UUID, customer_id: UUID, origin: EventOrigin
) -> CustomerErased:
    """Behind the erasure fence: every personal field, every payload, the event."""
    lock_customer_against_publishes(connection, customer_id)
    counts = repository.erase_customer(connection, consumer_id, customer_id)
    redacted = redact_customer_payloads(connection, consumer_id, customer_id)
    event_id = insert_event(
        connection,
        consumer_id=consumer_id,
        customer_id=customer_id,
        event_type="customer_erasure",
        origin=origin,
        payload={"customer_id": str(customer_id), "erased_at": counts.erased_at.isoformat()},
    )
    return CustomerErased(
        customer_id=customer_id,
        erased_at=counts.erased_at,
        already_erased=False,
        tags_removed=counts.tags,
        analytics_removed=counts.analytics,
        idempotency_keys_removed=counts.idempotency_keys,
        events_redacted=redacted,
        dead_letters_redacted=0,
        event_id=event_id,
    )


def _guarded(step: Callable[[], T]) -> T:
    """``step``, with a lock wait past ``LOCK_WAIT_MS`` or a frozen partition as 503."""
    try:
        return step()
    except DBAPIError as exc:
        raise _busy_or_frozen(exc) or exc from None


def _busy_or_frozen(exc: DBAPIError) -> ServiceUnavailable | None:
    """A lock wait past ``LOCK_WAIT_MS`` or a frozen partition: 503, never 500."""
    state = getattr(exc.orig, "pgcode", None)
    if state == LOCK_NOT_AVAILABLE:
        return ServiceUnavailable(BUSY, {"Retry-After": "3"})
    constraint = getattr(getattr(exc.orig, "diag", None), "constraint_name", None)
    if state == CHECK_VIOLATION and constraint == FREEZE_CONSTRAINT:
        return ServiceUnavailable(FROZEN, {"Retry-After": "30"})
    return None


def erasure_audit(consumer_id: UUID, origin: EventOrigin, erased: CustomerErased) -> AuditEntry:
    return AuditEntry(
        actor=f"consumer:{consumer_id}",
        action="customer_erasure",
        request_id=origin.request_id,
        consumer_id=consumer_id,
        method="POST",
        path=f"/customer/data/{erased.customer_id}/erase",
        status_code=200,
        detail=erased.model_dump(mode="json", exclude={"already_erased"}),
    )
