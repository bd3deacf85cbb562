"""Webhook endpoint API (SPEC 8), tenant-scoped: ``/webhooks/endpoints`` and below."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.http.deps import AppSettings, DbSession, Origin, PageCursor, PageLimit, RateLimited
from service.http.envelope import success
from service.http.responses import AUTHENTICATED, WITH_BODY, WITH_PARAMETERS, declared
from service.http.schemas import Envelope, ListPage
from service.kit.pagination import DEFAULT_LIMIT
from service.webhooks import service
from service.webhooks.schemas import (
    AttemptOut,
    AttemptStatus,
    EndpointCreate,
    EndpointDeleted,
    EndpointOut,
    EndpointUpdate,
    EndpointWithSecret,
    RecoverOutcome,
    RecoverRequest,
    SecretRotated,
)

router = APIRouter(prefix="/webhooks/endpoints", tags=["webhooks"])
ONE = declared(AUTHENTICATED, WITH_PARAMETERS, 404)
ONE_WITH_BODY = declared(AUTHENTICATED, WITH_BODY, WITH_PARAMETERS, 404)
LISTING = declared(AUTHENTICATED, WITH_PARAMETERS, 400)


@router.post(
    "",
    status_code=201,
    response_model=Envelope[EndpointWithSecret],
    responses=declared(AUTHENTICATED, WITH_BODY),
)
def webhook_create_endpoint(
    body: EndpointCreate,
    consumer: RateLimited,
    connection: DbSession,
    settings: AppSettings,
    origin: Origin,
) -> JSONResponse:
    """Register an endpoint; its ``secret`` is shown in this answer only."""
    endpoint = service.create_endpoint(
        connection, consumer.consumer_id, body, settings, origin.request_id
    )
    return success(endpoint, 201)


@router.get("", response_model=Envelope[ListPage[EndpointOut]], responses=LISTING)
def webhook_list_endpoints(
    consumer: RateLimited,
    connection: DbSession,
    cursor: PageCursor = None,
    limit: PageLimit = DEFAULT_LIMIT,
) -> JSONResponse:
    """The tenant's endpoints, oldest first."""
    return success(service.list_endpoints(connection, consumer.consumer_id, cursor, limit))


@router.get("/{endpoint_id}", response_model=Envelope[EndpointOut], responses=ONE)
def webhook_show_endpoint(
    endpoint_id: UUID, consumer: RateLimited, connection: DbSession
) -> JSONResponse:
    """One endpoint of the tenant (never its secret)."""
    return success(service.get_endpoint(connection, consumer.consumer_id, endpoint_id))


@router.patch("/{endpoint_id}", response_model=Envelope[EndpointOut], responses=ONE_WITH_BODY)
def webhook_update_endpoint(
    endpoint_id: UUID,
    body: EndpointUpdate,
    consumer: RateLimited,
    connection: DbSession,
    settings: AppSettings,
    origin: Origin,
) -> JSONResponse:
    """Change url, event_types, description or status (enabled | disabled)."""
    endpoint = service.update_endpoint(
        connection, consumer.consumer_id, endpoint_id, body, settings, origin.request_id
    )
    return success(endpoint)


@router.delete("/{endpoint_id}", response_model=Envelope[EndpointDeleted], responses=ONE)
def webhook_delete_endpoint(
    endpoint_id: UUID, consumer: RateLimited, connection: DbSession, origin: Origin
) -> JSONResponse:
    """Delete the endpoint; deliveries still pending for it are cancelled."""
    deleted = service.delete_endpoint(
        connection, consumer.consumer_id, endpoint_id, origin.request_id
    )
    return success(deleted)


@router.post("/{endpoint_id}/rotate-secret", response_model=Envelope[SecretRotated], responses=ONE)
def webhook_rotate_secret(
    endpoint_id: UUID,
    consumer: RateLimited,
    connection: DbSession,
    settings: AppSettings,
    origin: Origin,
) -> JSONResponse:
    """A new secret (shown once); the old one keeps signing for the grace period."""
    rotated = service.rotate_secret(
        connection, consumer.consumer_id, endpoint_id, settings, origin.request_id
    )
    return success(rotated)


@router.get(
    "/{endpoint_id}/attempts",
    response_model=Envelope[ListPage[AttemptOut]],
    responses=declared(AUTHENTICATED, WITH_PARAMETERS, 400, 404),
)
def webhook_list_attempts(
    endpoint_id: UUID,
    consumer: RateLimited,
    connection: DbSession,
    event_id: UUID | None = None,
    status: AttemptStatus | None = None,
    cursor: PageCursor = None,
    limit: PageLimit = DEFAULT_LIMIT,
) -> JSONResponse:
    """Delivery attempts to the endpoint, oldest first (``status=failed``: given up)."""
    page = service.list_attempts(
        connection, consumer.consumer_id, endpoint_id, event_id, status, cursor, limit
    )
    return success(page)


@router.post(
    "/{endpoint_id}/recover", response_model=Envelope[RecoverOutcome], responses=ONE_WITH_BODY
)
def webhook_recover(
    endpoint_id: UUID,
    body: RecoverRequest,
    consumer: RateLimited,
    connection: DbSession,
    origin: Origin,
) -> JSONResponse:
    """Send the events created in [since, until) again, each customer's in sequence order."""
    outcome = service.recover(
        connection, consumer.consumer_id, endpoint_id, body, origin.request_id
    )
    return success(outcome)
