"""Events read API: ``GET /events``, ``/events/{event_id}``, ``/events/last-delivered``."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from service.events import service
from service.events.schemas import (
    DeliverStatus,
    EventDetail,
    EventFilters,
    EventOut,
    EventType,
    LastDelivered,
    LastDeliveredList,
    LastDeliveredQuery,
    PublishStatus,
)
from service.http.deps import CurrentConsumer, DbPool, DbSession, PageCursor, PageLimit, RateLimited
from service.http.envelope import success
from service.http.schemas import Envelope, ListPage, UtcDatetime, error_responses
from service.kit.pagination import DEFAULT_LIMIT

router = APIRouter(prefix="/events", tags=["events"])
TENANT_ERRORS = (401, 403, 422, 429, 503)


@router.get(
    "",
    response_model=Envelope[ListPage[EventOut]],
    responses=error_responses(400, *TENANT_ERRORS),
)
def list_events(
    consumer: RateLimited,
    connection: DbSession,
    customer_id: UUID | None = None,
    event_type: EventType | None = None,
    publish_status: PublishStatus | None = None,
    deliver_status: DeliverStatus | None = None,
    since: Annotated[UtcDatetime | None, Query(description="created_at lower bound")] = None,
    cursor: PageCursor = None,
    limit: PageLimit = DEFAULT_LIMIT,
) -> JSONResponse:
    """The tenant's events, oldest first, optionally filtered."""
    filters = EventFilters(customer_id, event_type, publish_status, deliver_status, since)
    page = service.list_events(connection, consumer.consumer_id, filters, cursor, limit)
    return success(page)


@router.get(
    "/{event_id:uuid}",  # so /events/confirm-delivery never matches this route
    response_model=Envelope[EventDetail],
    responses=error_responses(404, *TENANT_ERRORS),
)
def show_event(event_id: UUID, consumer: RateLimited, connection: DbSession) -> JSONResponse:
    """One of the tenant's events with its publish and delivery state."""
    return success(service.get_event(connection, consumer.consumer_id, event_id))


@router.get(
    "/last-delivered",
    response_model=Envelope[LastDelivered],
    responses=error_responses(401, 403, 422, 503),
)
async def last_delivered(
    consumer: CurrentConsumer,
    pool: DbPool,
    customer_id: Annotated[
        UUID | None, Query(description="The customer; omitted: consumer-level events")
    ] = None,
) -> JSONResponse:
    """Highest delivered sequence of one aggregate (the worker's stale-duplicate check).

    Not rate limited, like confirm-delivery: it is the worker's path.
    """
    return success(await service.last_delivered(pool, consumer.consumer_id, customer_id))


@router.post(
    "/last-delivered",
    response_model=Envelope[LastDeliveredList],
    responses=error_responses(401, 403, 413, 422, 503),
)
async def last_delivered_many(
    body: LastDeliveredQuery, consumer: CurrentConsumer, pool: DbPool
) -> JSONResponse:
    """``GET /events/last-delivered`` for up to 100 customers (and the consumer) at once."""
    return success(await service.last_delivered_many(pool, consumer.consumer_id, body))
