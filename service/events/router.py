"""Events read API: ``GET /events``, ``/events/{event_id}``, ``/events/last-delivered``, and
the worker's recovery reads ``/events/after-sequence`` and ``/events/lost``."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from service.events import service
from service.events.schemas import (
    MAX_RECOVERY_EVENTS,
    DeliverStatus,
    EventDetail,
    EventFilters,
    EventList,
    EventOut,
    EventType,
    LastDelivered,
    LastDeliveredList,
    LastDeliveredQuery,
    PublishStatus,
)
from service.http.deps import CurrentConsumer, DbPool, DbSession, PageCursor, PageLimit, RateLimited
from service.http.envelope import success
from service.http.responses import AUTHENTICATED, WITH_BODY, WITH_PARAMETERS, declared
from service.http.schemas import Envelope, ListPage, UtcDatetime
from service.kit.pagination import DEFAULT_LIMIT

router = APIRouter(prefix="/events", tags=["events"])


@router.get(
    "",
    response_model=Envelope[ListPage[EventOut]],
    responses=declared(AUTHENTICATED, WITH_PARAMETERS, 400),
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
    responses=declared(AUTHENTICATED, WITH_PARAMETERS, 404),
)
def show_event(event_id: UUID, consumer: RateLimited, connection: DbSession) -> JSONResponse:
    """One of the tenant's events with its publish and delivery state."""
    return success(service.get_event(connection, consumer.consumer_id, event_id))


@router.get(
    "/last-delivered",
    response_model=Envelope[LastDelivered],
    responses=declared(AUTHENTICATED, WITH_PARAMETERS),
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
    responses=declared(AUTHENTICATED, WITH_BODY),
)
async def last_delivered_many(
    body: LastDeliveredQuery, consumer: CurrentConsumer, pool: DbPool
) -> JSONResponse:
    """``GET /events/last-delivered`` for up to 100 customers (and the consumer) at once."""
    return success(await service.last_delivered_many(pool, consumer.consumer_id, body))


RecoveryLimit = Annotated[
    int, Query(ge=1, le=MAX_RECOVERY_EVENTS, description="At most this many events")
]


@router.get(
    "/after-sequence",
    response_model=Envelope[EventList],
    responses=declared(AUTHENTICATED, WITH_PARAMETERS),
)
def events_after_sequence(
    consumer: CurrentConsumer,
    connection: DbSession,
    after_sequence: Annotated[int, Query(ge=0, le=2**62, description="Events after this one")],
    customer_id: Annotated[
        UUID | None, Query(description="The customer; omitted: consumer-level events")
    ] = None,
    through_sequence: Annotated[
        int | None, Query(ge=1, le=2**62, description="Up to and including this one")
    ] = None,
    limit: RecoveryLimit = 100,
) -> JSONResponse:
    """One aggregate's events after a sequence, in sequence order (the worker fills a gap).

    Not rate limited, like confirm-delivery: it is the worker's path, bounded by ``limit``.
    """
    found = service.events_after(
        connection, consumer.consumer_id, customer_id, after_sequence, through_sequence, limit
    )
    return success(found)


@router.get(
    "/lost",
    response_model=Envelope[ListPage[EventOut]],
    responses=declared(AUTHENTICATED, WITH_PARAMETERS, 400),
)
def lost_events(
    consumer: CurrentConsumer,
    connection: DbSession,
    older_than_ms: Annotated[
        int, Query(ge=1, le=2**40, description="Published at least this long ago (ms)")
    ],
    cursor: PageCursor = None,
    limit: RecoveryLimit = 100,
) -> JSONResponse:
    """Published events still undelivered after ``older_than_ms``, oldest first.

    With the queue's TTL as ``older_than_ms`` these can no longer be in the queue: the
    worker recovers them. Not rate limited (the worker's path), bounded by ``limit``.
    """
    found = service.lost_events(connection, consumer.consumer_id, older_than_ms, cursor, limit)
    return success(found)
