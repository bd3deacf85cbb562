"""Consumer (tenant) endpoints: admin management and key rotation.

The writes that must be committed before the broker or this instance's key caches act on
them take the engine (``DbEngine``): their service operation commits its own transaction.
"""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.consumers import service
from service.consumers.schemas import (
    BrokerCredentialsOut,
    ConsumerCreate,
    ConsumerCreated,
    ConsumerMe,
    ConsumerOut,
    ConsumerUpdate,
    KeyIssued,
    KeyOut,
)
from service.http.deps import (
    AdminAccess,
    AppSettings,
    AuthCaches,
    Caller,
    DbEngine,
    DbSession,
    Origin,
    PageCursor,
    PageLimit,
    RateLimited,
)
from service.http.envelope import success
from service.http.responses import AUTHENTICATED, WITH_BODY, WITH_PARAMETERS, declared
from service.http.schemas import Envelope, ListPage
from service.kit.pagination import DEFAULT_LIMIT

router = APIRouter(prefix="/consumer/data", tags=["consumers"])
me_router = APIRouter(prefix="/consumer", tags=["consumers"])
ONE = declared(AUTHENTICATED, WITH_PARAMETERS, 404)


@router.post(
    "",
    status_code=201,
    response_model=Envelope[ConsumerCreated],
    responses=declared(AUTHENTICATED, WITH_BODY, 409),
)
def create_consumer(
    body: ConsumerCreate,
    _: AdminAccess,
    caches: AuthCaches,
    engine: DbEngine,
    settings: AppSettings,
    origin: Origin,
) -> JSONResponse:
    """Create a tenant with its first API key (shown once) and provision its queues."""
    created = service.register_consumer(engine, settings, body, origin, caches)
    return success(created, 201)


@router.get(
    "",
    response_model=Envelope[ListPage[ConsumerOut]],
    responses=declared(AUTHENTICATED, WITH_PARAMETERS, 400),
)
def list_consumers(
    principal: Caller,
    connection: DbSession,
    cursor: PageCursor = None,
    limit: PageLimit = DEFAULT_LIMIT,
) -> JSONResponse:
    """All consumers for the operator; the calling tenant only for a tenant key."""
    return success(service.list_consumers(connection, principal, cursor, limit))


@router.get("/{consumer_id}", response_model=Envelope[ConsumerOut], responses=ONE)
def show_consumer(consumer_id: UUID, _: AdminAccess, connection: DbSession) -> JSONResponse:
    """One consumer (operator only)."""
    return success(service.get_consumer(connection, consumer_id))


@router.patch(
    "/{consumer_id}",
    response_model=Envelope[ConsumerOut],
    responses=declared(AUTHENTICATED, WITH_BODY, WITH_PARAMETERS, 404),
)
def update_consumer(
    consumer_id: UUID,
    body: ConsumerUpdate,
    _: AdminAccess,
    caches: AuthCaches,
    engine: DbEngine,
    settings: AppSettings,
) -> JSONResponse:
    """Enable or disable a consumer (its API key and broker login with it), or change its
    description or rate limits."""
    return success(service.change_consumer(engine, settings, consumer_id, body, caches))


@router.post(
    "/{consumer_id}/broker-credentials/rotate",
    status_code=201,
    response_model=Envelope[BrokerCredentialsOut],
    responses=ONE,
)
def rotate_broker_credentials(
    consumer_id: UUID, _: AdminAccess, connection: DbSession, settings: AppSettings
) -> JSONResponse:
    """Issue a new broker password (shown once; creates the user if missing); the old
    password's connections are closed. A disabled consumer's user stays without access."""
    credentials = service.rotate_broker_credentials(connection, settings, consumer_id)
    return success(BrokerCredentialsOut(**vars(credentials)), 201)


@me_router.get("/me", response_model=Envelope[ConsumerMe], responses=declared(AUTHENTICATED))
def show_own_consumer(
    consumer: RateLimited, connection: DbSession, settings: AppSettings
) -> JSONResponse:
    """The consumer this API key belongs to (name, status, queue names, broker user)."""
    return success(service.whoami(connection, settings, consumer.consumer_id))


@router.post(
    "/{consumer_id}/keys/rotate",
    status_code=201,
    response_model=Envelope[KeyIssued],
    responses=ONE,
)
def rotate_consumer_key(
    consumer_id: UUID,
    request: Request,
    principal: Caller,
    caches: AuthCaches,
    engine: DbEngine,
    settings: AppSettings,
) -> JSONResponse:
    """Issue a new key (shown once); the old key stops working (operator or the tenant itself)."""
    request.state.audited = True
    key = service.replace_key(engine, settings, principal, consumer_id, caches)
    return success(key, 201)


@router.get("/{consumer_id}/keys", response_model=Envelope[ListPage[KeyOut]], responses=ONE)
def list_consumer_keys(consumer_id: UUID, _: AdminAccess, connection: DbSession) -> JSONResponse:
    """Every key of the consumer, active or not (never the hash)."""
    keys = service.list_keys(connection, consumer_id)
    return success({"items": keys, "next_cursor": None, "count": len(keys)})


@router.post("/{consumer_id}/keys/{key_id}/revoke", response_model=Envelope[KeyOut], responses=ONE)
def revoke_consumer_key(
    consumer_id: UUID, key_id: UUID, _: AdminAccess, caches: AuthCaches, engine: DbEngine
) -> JSONResponse:
    """Deactivate one key at once (idempotent)."""
    return success(service.revoke_consumer_key(engine, consumer_id, key_id, caches))
