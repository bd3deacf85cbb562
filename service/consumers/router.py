"""Consumer (tenant) endpoints: admin management and key rotation.

Writes that must be visible before something else happens (queue provisioning, cache
eviction) commit in an explicit ``transaction`` here instead of the request's session.
"""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.auth.keys import ParsedKey
from service.auth.service import AuthState
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
from service.kit.db import transaction
from service.kit.pagination import DEFAULT_LIMIT
from service.ratelimit.limiter import FailedAuthThrottle

router = APIRouter(prefix="/consumer/data", tags=["consumers"])
me_router = APIRouter(prefix="/consumer", tags=["consumers"])
ONE = declared(AUTHENTICATED, WITH_PARAMETERS, 404)


def remember_issued_key(request: Request, key: ParsedKey) -> None:
    """Let the failed-auth throttle recognise the new key, so strangers cannot lock it out."""
    throttle: FailedAuthThrottle = request.app.state.auth_throttle
    throttle.remember_good(key.prefix, key.fingerprint)


def evict_cached_keys(request: Request, consumer_id: UUID) -> None:
    """Make this instance re-verify the consumer's keys on their next use."""
    auth: AuthState = request.app.state.auth
    auth.cache.evict_consumer(consumer_id)


@router.post(
    "",
    status_code=201,
    response_model=Envelope[ConsumerCreated],
    responses=declared(AUTHENTICATED, WITH_BODY, 409),
)
def create_consumer(
    body: ConsumerCreate,
    request: Request,
    _: AdminAccess,
    engine: DbEngine,
    settings: AppSettings,
    origin: Origin,
) -> JSONResponse:
    """Create a tenant with its first API key (shown once) and provision its queues."""
    issued = service.new_key(settings.auth.bcrypt_rounds)
    with transaction(engine) as connection:
        created = service.create_consumer(connection, body, issued, origin)
    remember_issued_key(request, issued[0])
    created.queue_provisioned = service.provision_queues(settings, created.name)
    broker = service.issue_broker_credentials(settings, created.name)
    if broker is not None:
        created.broker = BrokerCredentialsOut(**vars(broker))
        created.broker_provisioned = True
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
    request: Request,
    _: AdminAccess,
    engine: DbEngine,
    settings: AppSettings,
) -> JSONResponse:
    """Enable or disable a consumer (its API key and broker login with it), or change its
    description or rate limits."""
    with transaction(engine) as connection:
        updated = service.update_consumer(connection, consumer_id, body)
        service.sync_broker_access(settings, updated, body)
    evict_cached_keys(request, consumer_id)
    return success(updated)


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
    engine: DbEngine,
    settings: AppSettings,
) -> JSONResponse:
    """Issue a new key (shown once); the old key stops working (operator or the tenant itself)."""
    request.state.audited = True
    issued = service.new_key(settings.auth.bcrypt_rounds)
    with transaction(engine) as connection:
        key = service.rotate_key(connection, principal, consumer_id, issued)
    evict_cached_keys(request, consumer_id)
    remember_issued_key(request, issued[0])
    return success(key, 201)


@router.get("/{consumer_id}/keys", response_model=Envelope[ListPage[KeyOut]], responses=ONE)
def list_consumer_keys(consumer_id: UUID, _: AdminAccess, connection: DbSession) -> JSONResponse:
    """Every key of the consumer, active or not (never the hash)."""
    keys = service.list_keys(connection, consumer_id)
    return success({"items": keys, "next_cursor": None, "count": len(keys)})


@router.post("/{consumer_id}/keys/{key_id}/revoke", response_model=Envelope[KeyOut], responses=ONE)
def revoke_consumer_key(
    consumer_id: UUID, key_id: UUID, request: Request, _: AdminAccess, engine: DbEngine
) -> JSONResponse:
    """Deactivate one key at once (idempotent)."""
    with transaction(engine) as connection:
        key = service.revoke_key(connection, consumer_id, key_id)
    evict_cached_keys(request, consumer_id)
    return success(key)
