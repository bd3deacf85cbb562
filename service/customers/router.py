"""Customer endpoints (tenant): CRUD with events, tags and analytics snapshots."""

from __future__ import annotations

import re
from functools import partial
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from service.auth.dependencies import rate_limited_tenant
from service.customers import erasure, service
from service.customers.schemas import (
    AnalyticsIn,
    AnalyticsOut,
    CustomerCreate,
    CustomerDeleted,
    CustomerErased,
    CustomerOut,
    CustomerStatus,
    StatusChange,
    TagKey,
    TagsIn,
    TagsOut,
)
from service.http.deps import AppSettings, DbSession, Origin, PageCursor, PageLimit, RateLimited
from service.http.direct import DirectRoute, answered_by, json_body
from service.http.envelope import success
from service.http.responses import AUTHENTICATED, WITH_BODY, WITH_PARAMETERS, declared
from service.http.schemas import Envelope, ListPage, UtcDatetime
from service.kit.pagination import DEFAULT_LIMIT
from service.kit.request import db_pool_of, origin_of
from service.messaging.operate.dlq_erasure import redact_dead_letters

router = APIRouter(prefix="/customer/data", tags=["customers"], route_class=DirectRoute)
ONE = declared(AUTHENTICATED, WITH_PARAMETERS, 404)
ONE_WITH_BODY = declared(AUTHENTICATED, WITH_BODY, WITH_PARAMETERS, 404)
REPLAYED_HEADER = "Idempotent-Replayed"
IDEMPOTENCY_HEADER = "Idempotency-Key"
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]+$"
IDEMPOTENCY_KEY_MAX = 255
IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)


IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias=IDEMPOTENCY_HEADER,
        min_length=1,
        max_length=IDEMPOTENCY_KEY_MAX,
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description=(
            "Makes a retry safe: the same key with the same body within 24 h answers the "
            "first customer again (header Idempotent-Replayed: true) and writes nothing; "
            "with another body it answers 409. Visible ASCII, at most 255 characters."
        ),
    ),
]


async def create_customer_directly(request: Request) -> Response | None:
    """``create_customer`` without FastAPI's dependency solving, for a request FastAPI would
    accept: a valid JSON body and a valid ``Idempotency-Key`` or none. None for anything
    else, before the tenant is checked or a token taken (``service.http.direct``)."""
    body = await json_body(request, CustomerCreate)
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if body is None or not acceptable_idempotency_key(key):
        return None
    consumer = await rate_limited_tenant(request)
    return await create_customer(body, request, consumer, key)


def acceptable_idempotency_key(key: str | None) -> bool:
    """What ``IdempotencyKeyHeader`` accepts: none, or 1 to 255 visible ASCII characters."""
    return key is None or (len(key) <= IDEMPOTENCY_KEY_MAX and bool(IDEMPOTENCY_KEY.fullmatch(key)))


@router.post(
    "",
    status_code=201,
    response_model=Envelope[CustomerOut],
    responses=declared(AUTHENTICATED, WITH_BODY, WITH_PARAMETERS, 409),
)
@answered_by(create_customer_directly)
async def create_customer(
    body: CustomerCreate,
    request: Request,
    consumer: RateLimited,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    """Create a customer; its ``customer_creation`` event commits with it."""
    pool, origin = db_pool_of(request), origin_of(request)  # hot route: two dependencies fewer
    customer, replayed = await service.create_customer(
        pool, consumer.consumer_id, body, origin, idempotency_key
    )
    return success(customer, 201, {REPLAYED_HEADER: "true"} if replayed else None)


@router.get(
    "",
    response_model=Envelope[ListPage[CustomerOut]],
    responses=declared(AUTHENTICATED, WITH_PARAMETERS, 400),
)
def list_customers(
    consumer: RateLimited,
    connection: DbSession,
    status: CustomerStatus | None = None,
    cursor: PageCursor = None,
    limit: PageLimit = DEFAULT_LIMIT,
) -> JSONResponse:
    """The tenant's customers, oldest first, optionally by status."""
    return success(service.list_customers(connection, consumer.consumer_id, status, cursor, limit))


@router.get("/{customer_id}", response_model=Envelope[CustomerOut], responses=ONE)
def show_customer(customer_id: UUID, consumer: RateLimited, connection: DbSession) -> JSONResponse:
    """One customer of the tenant."""
    return success(service.get_customer(connection, consumer.consumer_id, customer_id))


@router.patch(
    "/{customer_id}/status", response_model=Envelope[CustomerOut], responses=ONE_WITH_BODY
)
def change_customer_status(
    customer_id: UUID,
    body: StatusChange,
    consumer: RateLimited,
    connection: DbSession,
    origin: Origin,
) -> JSONResponse:
    """Change the status (event ``customer_status_change``); the same status is a no-op."""
    customer = service.change_status(
        connection, consumer.consumer_id, customer_id, body.status, origin
    )
    return success(customer)


@router.delete("/{customer_id}", response_model=Envelope[CustomerDeleted], responses=ONE)
def delete_customer(
    customer_id: UUID, consumer: RateLimited, connection: DbSession, origin: Origin
) -> JSONResponse:
    """Soft-delete the customer (event ``customer_deletion``); a second delete is 404."""
    return success(service.delete_customer(connection, consumer.consumer_id, customer_id, origin))


@router.post("/{customer_id}/erase", response_model=Envelope[CustomerErased], responses=ONE)
def erase_customer(
    customer_id: UUID,
    consumer: RateLimited,
    connection: DbSession,
    settings: AppSettings,
    origin: Origin,
) -> JSONResponse:
    """Erase the customer's personal data (name, email, tags, analytics, event payloads, its
    dead letters in the tenant's DLQ) in one transaction, audited; event
    ``customer_erasure``. Deleted customers can be erased; a second erasure answers 200 with
    ``already_erased`` and sweeps the DLQ again. 503 (nothing erased) while a lock, a frozen
    partition or the broker is in the way."""
    dead_letters = partial(redact_dead_letters, settings, consumer.name)
    erased = erasure.erase_customer(
        connection, consumer.consumer_id, customer_id, origin, dead_letters
    )
    return success(erased)


@router.put("/{customer_id}/tags", response_model=Envelope[TagsOut], responses=ONE_WITH_BODY)
def merge_customer_tags(
    customer_id: UUID, body: TagsIn, consumer: RateLimited, connection: DbSession
) -> JSONResponse:
    """Merge tags into the customer's tags; answers the whole map."""
    return success(service.merge_tags(connection, consumer.consumer_id, customer_id, body.tags))


@router.get("/{customer_id}/tags", response_model=Envelope[TagsOut], responses=ONE)
def list_customer_tags(
    customer_id: UUID, consumer: RateLimited, connection: DbSession
) -> JSONResponse:
    """The customer's tags."""
    return success(service.get_tags(connection, consumer.consumer_id, customer_id))


@router.delete("/{customer_id}/tags/{key}", response_model=Envelope[TagsOut], responses=ONE)
def delete_customer_tag(
    customer_id: UUID,
    key: Annotated[TagKey, Path(description="Tag key")],
    consumer: RateLimited,
    connection: DbSession,
) -> JSONResponse:
    """Remove one tag (404 when absent); answers the remaining map."""
    return success(service.delete_tag(connection, consumer.consumer_id, customer_id, key))


@router.post(
    "/{customer_id}/analytics",
    status_code=201,
    response_model=Envelope[AnalyticsOut],
    responses=ONE_WITH_BODY,
)
def add_customer_analytics(
    customer_id: UUID, body: AnalyticsIn, consumer: RateLimited, connection: DbSession
) -> JSONResponse:
    """Store one metrics snapshot."""
    snapshot = service.add_analytics(connection, consumer.consumer_id, customer_id, body)
    return success(snapshot, 201)


@router.get(
    "/{customer_id}/analytics",
    response_model=Envelope[ListPage[AnalyticsOut]],
    responses=declared(AUTHENTICATED, WITH_PARAMETERS, 400, 404),
)
def list_customer_analytics(
    customer_id: UUID,
    consumer: RateLimited,
    connection: DbSession,
    from_: Annotated[UtcDatetime | None, Query(alias="from")] = None,
    to: Annotated[UtcDatetime | None, Query()] = None,
    cursor: PageCursor = None,
    limit: PageLimit = DEFAULT_LIMIT,
) -> JSONResponse:
    """Snapshots recorded between ``from`` and ``to`` (inclusive), oldest first."""
    page = service.list_analytics(
        connection, consumer.consumer_id, customer_id, (from_, to), (cursor, limit)
    )
    return success(page)
