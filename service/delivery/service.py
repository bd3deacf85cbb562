"""Rules of resend / redeliver / confirm-delivery. Never commits; the caller's session does."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal
from uuid import UUID

import asyncpg
from sqlalchemy import Connection, Row

from service.auth.service import Principal
from service.config import Settings
from service.consumers.service import find_consumer_id
from service.delivery import repository
from service.delivery.schemas import (
    MAX_DRY_RUN_IDS,
    ConfirmDeliveriesRequest,
    ConfirmDeliveryRequest,
    DeliveryReceipt,
    DeliveryReceipts,
    RepublishGroup,
    RepublishOutcome,
    RepublishRequest,
    Selection,
)
from service.events import repository as events_repository
from service.events.erasure_fence import ErasureFence
from service.events.service import EVENT_NOT_FOUND
from service.kit.db_async import pooled_connection
from service.kit.errors import Forbidden, NotFound, ServiceUnavailable, TooManyRequests
from service.kit.pagination import decode_aggregate_cursor, encode_aggregate_cursor
from service.messaging.connection import BrokerUnavailable
from service.messaging.messages import REPUBLISHED_HEADER
from service.messaging.publish.ordered import PublishReport, publish_runs, record_outcomes
from service.messaging.publish.publisher import ConfirmingPublisher
from service.ops.platform_metrics import observe_delivery

Kind = Literal["resend", "redeliver"]
CONFIRM_CONNECTIONS = 4  # of the pool's (default 10), for one call of several receipts
PublisherFactory = Callable[[], ConfirmingPublisher]
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
    settings: Settings,
) -> RepublishOutcome:
    """Preview (dry run) or republish, in aggregate order, one chunk of the selection."""
    selection = resolve_selection(connection, request, principal)
    if request.dry_run:
        return preview(connection, kind, selection, min(request.limit, MAX_DRY_RUN_IDS))
    limit = request.limit
    if not principal.is_admin:
        limit = _tenant_allowance(connection, selection, limit, settings)
    after = decode_aggregate_cursor(request.cursor)
    rows = repository.select_runs(connection, kind, selection, after, limit)
    runs, blocked = ordered_runs(rows)
    report = _publish(connection, runs, kind, open_publisher)
    record_outcomes(connection, report, settings.relay.max_backoff_seconds, f"api {kind}")
    if not principal.is_admin and selection.consumer_id is not None:
        spent = len(report.published) + len(report.failed)
        repository.spend_budget(connection, selection.consumer_id, spent)
    outcome = RepublishOutcome(
        dry_run=False,
        matched=len(rows),
        republished=len(report.published),
        failed=len(report.failed),
        held_back=report.held + blocked,
    )
    if len(rows) == limit:
        outcome.next_cursor = encode_aggregate_cursor(rows[-1].aggregate_id, rows[-1].sequence)
    return outcome


def ordered_runs(rows: Sequence[Row[Any]]) -> tuple[list[list[Row[Any]]], int]:
    """The rows as one run per aggregate (they come sorted), each cut at its first blocked row.

    Returns the runs and how many rows were cut off.
    """
    runs: dict[Any, list[Row[Any]]] = {}
    stopped: set[Any] = set()
    cut = 0
    for row in rows:
        if row.aggregate_id in stopped or row.blocked:
            stopped.add(row.aggregate_id)
            cut += 1
            continue
        runs.setdefault(row.aggregate_id, []).append(row)
    return list(runs.values()), cut


def _tenant_allowance(
    connection: Connection, selection: Selection, limit: int, settings: Settings
) -> int:
    """How many events this tenant may republish now; 429 when its minute budget is spent."""
    assert selection.consumer_id is not None
    per_minute = settings.republish.tenant_per_minute
    tokens = repository.take_budget(connection, selection.consumer_id, per_minute, per_minute)
    allowed = min(limit, settings.republish.tenant_max_per_call, int(tokens))
    if allowed < 1:
        wait = max(1, math.ceil((1 - tokens) * 60 / per_minute))
        raise TooManyRequests(
            f"Republish budget spent ({per_minute} events per minute per tenant); "
            f"retry after {wait} s",
            headers={"Retry-After": str(wait)},
        )
    return allowed


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
        consumer_id = find_consumer_id(connection, request.consumer_name)
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


def _publish(
    connection: Connection, runs: list[list[Row[Any]]], kind: Kind, open_publisher: PublisherFactory
) -> PublishReport:
    """Publish the runs in aggregate order on one connection; 503 when the broker is down.

    Behind the erasure fence on the request's transaction: payloads re-read just before
    each wave, and an erasure waits for this request (docs/RELIABILITY.md, "Erasure").
    """
    if not runs:
        return PublishReport()
    fence = ErasureFence.within(connection)
    try:
        with open_publisher() as publisher:
            return publish_runs(
                publisher, runs, lambda _row: {REPUBLISHED_HEADER: kind}, prepare=fence.around()
            )
    except BrokerUnavailable as exc:
        raise ServiceUnavailable(BROKER_DOWN) from exc


async def confirm_delivery(
    pool: asyncpg.Pool, consumer_id: UUID, request: ConfirmDeliveryRequest
) -> DeliveryReceipt:
    """Record the receipt once; only the first one of each status moves the event."""
    async with pooled_connection(pool) as connection:
        state = await events_repository.confirm_delivery(
            connection, request.event_id, consumer_id, request.status, request.detail
        )
    if state is None:
        raise NotFound(EVENT_NOT_FOUND)
    return _receipt(state, request.status)


async def confirm_deliveries(
    pool: asyncpg.Pool, consumer_id: UUID, request: ConfirmDeliveriesRequest
) -> DeliveryReceipts:
    """Record several receipts, each exactly as ``confirm_delivery`` would; answered in the
    order sent.

    One statement and one commit per receipt, on up to ``CONFIRM_CONNECTIONS`` pooled
    connections at once (an event's receipts in the order sent, on one of them). Not one
    transaction: it would hold each event's row until the last commit, and the relay
    marking a batch of those events published locks them in another order, so the two
    deadlocked (a second's wait each). Not one connection: its commits would queue behind
    each other, and a worker's batches would record no faster than one receipt at a time.
    A failure part-way (503) may leave some receipts recorded; sending the call again is
    safe, as every receipt is idempotent.
    """
    receipts = request.receipts
    states: list[asyncpg.Record | None] = [None] * len(receipts)
    by_event: dict[UUID, list[int]] = {}
    for index, receipt in enumerate(receipts):
        by_event.setdefault(receipt.event_id, []).append(index)
    groups = iter(by_event.values())  # shared by the lanes below: each takes the next event

    async def lane() -> None:
        async with pooled_connection(pool) as connection:
            for group in groups:
                for index in group:
                    receipt = receipts[index]
                    states[index] = await events_repository.confirm_delivery(
                        connection, receipt.event_id, consumer_id, receipt.status, receipt.detail
                    )

    try:
        async with asyncio.TaskGroup() as lanes:
            for _ in range(min(CONFIRM_CONNECTIONS, len(by_event))):
                lanes.create_task(lane())
    except ExceptionGroup as failed:  # the first failure, as one connection would raise it
        raise failed.exceptions[0] from None
    answer = DeliveryReceipts(items=[], not_found=[])
    for receipt, state in zip(receipts, states, strict=True):
        if state is None:
            answer.not_found.append(receipt.event_id)
        else:
            answer.items.append(_receipt(state, receipt.status))
    return answer


def _receipt(state: asyncpg.Record, status: str) -> DeliveryReceipt:
    """The answer for one recorded receipt; counts a first delivery in the metrics."""
    if state["first_delivery"]:
        observe_delivery(state["created_at"], state["delivered_at"])
    return DeliveryReceipt(
        event_id=state["event_id"],
        status=status,
        duplicate=not state["inserted"],
        deliver_status=state["deliver_status"],
        delivered_at=state["delivered_at"],
        deliver_try_count=state["deliver_try_count"],
    )
