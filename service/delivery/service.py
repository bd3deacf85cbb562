"""Rules of resend / redeliver / confirm-delivery. Never commits; the caller's session does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal
from uuid import UUID

import asyncpg
from sqlalchemy import Connection

from service.auth.service import Principal
from service.db_async import pooled_connection
from service.delivery import repository
from service.delivery.schemas import (
    MAX_DRY_RUN_IDS,
    ConfirmDeliveryRequest,
    DeliveryReceipt,
    RepublishGroup,
    RepublishOutcome,
    RepublishRequest,
    Selection,
)
from service.errors import Forbidden, NotFound, ServiceUnavailable
from service.events.service import EVENT_NOT_FOUND
from service.messaging.connection import BrokerUnavailable
from service.messaging.outbox import mark_failed, mark_published, outbound_events
from service.messaging.publisher import ConfirmingPublisher, PublishResult, outgoing_event
from service.pagination import cursor_params, decode_cursor, encode_cursor

Kind = Literal["resend", "redeliver"]
PublisherFactory = Callable[[], ConfirmingPublisher]
REPUBLISHED_HEADER = "x-fintegrate-republished"
TENANT_CONSUMER_NAME = (
    "consumer_name is for operators (X-Admin-Key); a tenant always acts on its own events"
)
BROKER_DOWN = (
    "RabbitMQ is unreachable, nothing was republished; retry later "
    "(the relay publishes pending events by itself once the broker is back)"
)


def republish(
    connection: Connection,
    kind: Kind,
    request: RepublishRequest,
    principal: Principal,
    open_publisher: PublisherFactory,
    max_backoff_seconds: float,
) -> RepublishOutcome:
    """Preview (dry run) or republish one chunk of the events the request selects."""
    selection = resolve_selection(connection, request, principal)
    if request.dry_run:
        return preview(connection, kind, selection, min(request.limit, MAX_DRY_RUN_IDS))
    rows = repository.claim(
        connection, kind, selection, cursor_params(decode_cursor(request.cursor)), request.limit
    )
    outcome = publish_rows(connection, rows, kind, open_publisher, max_backoff_seconds)
    if len(rows) == request.limit:
        outcome.next_cursor = encode_cursor(rows[-1].created_at, rows[-1].event_id)
    return outcome


def resolve_selection(
    connection: Connection, request: RepublishRequest, principal: Principal
) -> Selection:
    """The request's filters, scoped to the tenant, or to one consumer for an admin."""
    consumer_id: UUID | None = None
    if not principal.is_admin:
        if request.consumer_name is not None:
            raise Forbidden(TENANT_CONSUMER_NAME)
        assert principal.consumer is not None
        consumer_id = principal.consumer.consumer_id
    elif request.consumer_name is not None:
        consumer_id = repository.consumer_id_by_name(connection, request.consumer_name)
        if consumer_id is None:
            raise NotFound(f"Consumer {request.consumer_name!r} not found")
    return Selection(
        request.period_in_days, request.max_try_count, tuple(request.event_types), consumer_id
    )


def preview(
    connection: Connection, kind: Kind, selection: Selection, limit: int
) -> RepublishOutcome:
    """Counts per consumer and type, and the first ids; nothing changes."""
    groups = [
        RepublishGroup.model_validate(row._mapping)
        for row in repository.count_groups(connection, kind, selection)
    ]
    return RepublishOutcome(
        dry_run=True,
        matched=sum(group.count for group in groups),
        republished=0,
        failed=0,
        event_ids=repository.first_ids(connection, kind, selection, limit),
        groups=groups,
    )


def publish_rows(
    connection: Connection,
    rows: Any,
    kind: Kind,
    open_publisher: PublisherFactory,
    max_backoff_seconds: float,
) -> RepublishOutcome:
    """Publish the locked rows synchronously and record each outcome on its row."""
    if not rows:
        return RepublishOutcome(dry_run=False, matched=0, republished=0, failed=0)
    events, orphans = outbound_events(rows)
    results = _publish(events, kind, open_publisher)
    published = [event.event_id for event, result in zip(events, results, strict=True) if result.ok]
    failures = [
        (event.event_id, result.reason or "not confirmed")
        for event, result in zip(events, results, strict=True)
        if not result.ok
    ]
    failures += [
        (str(row.event_id), f"consumer {row.consumer_id} does not exist") for row in orphans
    ]
    mark_published(connection, published)
    mark_failed(connection, failures, max_backoff_seconds)
    return RepublishOutcome(
        dry_run=False, matched=len(rows), republished=len(published), failed=len(failures)
    )


def _publish(
    events: list[Any], kind: Kind, open_publisher: PublisherFactory
) -> list[PublishResult]:
    if not events:
        return []
    headers = {REPUBLISHED_HEADER: kind}
    try:
        with open_publisher() as publisher:
            return publisher.publish_batch([outgoing_event(event, headers) for event in events])
    except BrokerUnavailable as exc:
        raise ServiceUnavailable(BROKER_DOWN) from exc


async def confirm_delivery(
    pool: asyncpg.Pool, consumer_id: UUID, request: ConfirmDeliveryRequest
) -> DeliveryReceipt:
    """Record the receipt once; only the first one of each status moves the event."""
    async with pooled_connection(pool) as connection:
        state = await repository.confirm_delivery(
            connection, request.event_id, consumer_id, request.status, request.detail
        )
    if state is None:
        raise NotFound(EVENT_NOT_FOUND)
    return DeliveryReceipt(
        event_id=state["event_id"],
        status=request.status,
        duplicate=not state["inserted"],
        deliver_status=state["deliver_status"],
        delivered_at=state["delivered_at"],
        deliver_try_count=state["deliver_try_count"],
    )
