"""Consumer rules: creation with its first key and system event, updates, key lifecycle.

bcrypt runs in ``new_key`` before any transaction opens, so no connection waits on it.
Rotation deactivates the old key and inserts the new one in one transaction, under a lock
on the consumer row (the one-active-key index holds).

The operations the API calls with the engine (``register_consumer``, ``change_consumer``,
``replace_key``, ``revoke_consumer_key``) commit their own transaction: what follows the
commit (the broker's queues and user, this instance's key caches) must see it, so it
cannot wait for the request's session (docs/ARCHITECTURE.md, "Transactions").
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Engine, Row

from service.auth import repository as keys_repository
from service.auth.keys import ParsedKey, generate_key, hash_key
from service.auth.service import KeyCaches, Principal
from service.config import Settings
from service.consumers import repository
from service.consumers.broker import BrokerAccounts, BrokerCredentials
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
from service.events.repository import insert_event
from service.kit.db import transaction
from service.kit.errors import Conflict, NotFound, ServiceUnavailable
from service.kit.pagination import build_page, cursor_params, decode_cursor
from service.kit.request import EventOrigin
from service.messaging.operate.management import ManagementUnavailable
from service.messaging.operate.provisioning import provision_consumer_queues
from service.messaging.topology import dlq_name, queue_name

logger = logging.getLogger(__name__)

CONSUMER_NOT_FOUND = "Consumer not found"
BROKER_UNAVAILABLE = (
    "RabbitMQ management API unavailable; nothing was changed, retry shortly "
    "(FINTEGRATE_RABBITMQ_MANAGEMENT_URL)"
)
KEY_NOT_FOUND = "API key not found"


def new_key(rounds: int) -> tuple[ParsedKey, str]:
    """A fresh key and its bcrypt hash."""
    key = generate_key()
    return key, hash_key(key, rounds)


def consumer_out(row: Row[Any]) -> ConsumerOut:
    """The consumer with its queue names from the topology module."""
    return ConsumerOut(**row._mapping, queue_name=queue_name(row.name), dlq_name=dlq_name(row.name))


def create_consumer(
    connection: Connection,
    data: ConsumerCreate,
    issued: tuple[ParsedKey, str],
    origin: EventOrigin,
) -> ConsumerCreated:
    """Insert the consumer, its first key and its ``consumer_created`` event; 409 if taken."""
    row = repository.insert_consumer(connection, data.model_dump())
    if row is None:
        raise Conflict(f"A consumer named {data.name!r} already exists; choose another name")
    key, key_hash = issued
    key_row = keys_repository.insert_key(connection, row.consumer_id, key.prefix, key_hash)
    insert_event(
        connection,
        consumer_id=row.consumer_id,
        customer_id=None,
        event_type="consumer_created",
        origin=origin,
        payload={"consumer_id": str(row.consumer_id), "name": row.name},
    )
    return ConsumerCreated(
        **consumer_out(row).model_dump(),
        api_key=key.full,
        key_id=key_row.key_id,
        key_prefix=key.prefix,
    )


def provision_queues(settings: Settings, consumer_name: str) -> bool:
    """Declare the tenant's queue and DLQ; False (logged) when the broker refuses or is away."""
    try:
        provision_consumer_queues(settings, consumer_name)
    except Exception:
        logger.warning(
            "queues of consumer %s not provisioned; run `fintegrate queues provision`",
            consumer_name,
            exc_info=True,
        )
        return False
    return True


def issue_broker_credentials(settings: Settings, consumer_name: str) -> BrokerCredentials | None:
    """A new tenant's broker user; None (logged) when the management API is unavailable."""
    accounts = BrokerAccounts(settings)
    if not accounts.configured:
        return None
    try:
        return accounts.issue(consumer_name)
    except ManagementUnavailable:
        logger.warning(
            "broker user of consumer %s not created; run "
            "`fintegrate consumer rotate-broker-credentials %s`",
            consumer_name,
            consumer_name,
            exc_info=True,
        )
        return None


def rotate_broker_credentials(
    connection: Connection, settings: Settings, consumer_id: UUID
) -> BrokerCredentials:
    """A new broker password (the user is created if missing); 503 when the API is away."""
    consumer = get_consumer(connection, consumer_id)
    try:
        return BrokerAccounts(settings).issue(consumer.name, active=consumer.status == "active")
    except ManagementUnavailable as exc:
        raise ServiceUnavailable(BROKER_UNAVAILABLE, {"Retry-After": "5"}) from exc


def sync_broker_access(settings: Settings, consumer: ConsumerOut, changes: ConsumerUpdate) -> None:
    """Suspend or restore the tenant's broker user after a status change; 503 on failure
    (raised inside the caller's transaction, so the status change is rolled back)."""
    if "status" not in changes.model_fields_set:
        return
    accounts = BrokerAccounts(settings)
    try:
        if consumer.status == "disabled":
            accounts.suspend(consumer.name)
        else:
            accounts.restore(consumer.name)
    except ManagementUnavailable as exc:
        raise ServiceUnavailable(BROKER_UNAVAILABLE, {"Retry-After": "5"}) from exc


def whoami(connection: Connection, settings: Settings, consumer_id: UUID) -> ConsumerMe:
    """The calling tenant's consumer: name, status, queue names and broker user."""
    consumer = get_consumer(connection, consumer_id)
    return ConsumerMe(
        **consumer.model_dump(include={"consumer_id", "name", "status", "queue_name", "dlq_name"}),
        broker_username=BrokerAccounts(settings).username(consumer.name),
    )


def list_consumers(
    connection: Connection, principal: Principal, cursor: str | None, limit: int
) -> dict[str, Any]:
    """Every consumer for the operator; only itself for a tenant."""
    if principal.consumer is not None:
        own = get_consumer(connection, principal.consumer.consumer_id)
        return {"items": [own], "next_cursor": None, "count": 1}
    after = cursor_params(decode_cursor(cursor))
    consumers = [
        consumer_out(row) for row in repository.list_consumers(connection, after, limit + 1)
    ]
    return build_page(consumers, limit, lambda item: (item.created_at, item.consumer_id))


def get_consumer(connection: Connection, consumer_id: UUID) -> ConsumerOut:
    row = repository.get_consumer(connection, consumer_id)
    if row is None:
        raise NotFound(CONSUMER_NOT_FOUND)
    return consumer_out(row)


def update_consumer(
    connection: Connection, consumer_id: UUID, changes: ConsumerUpdate
) -> ConsumerOut:
    """Change status, description or rate limits (only the fields sent)."""
    row = repository.update_consumer(
        connection, consumer_id, changes.model_dump(include=changes.model_fields_set)
    )
    if row is None:
        raise NotFound(CONSUMER_NOT_FOUND)
    return consumer_out(row)


def consumer_names(connection: Connection) -> list[str]:
    """Every consumer's name, sorted (for operator commands over all tenants)."""
    return repository.consumer_names(connection)


def find_consumer_id(connection: Connection, name: str) -> UUID | None:
    """The id of the consumer called ``name``, or None."""
    return repository.consumer_id_by_name(connection, name)


def rotate_key(
    connection: Connection,
    principal: Principal,
    consumer_id: UUID,
    issued: tuple[ParsedKey, str],
) -> KeyIssued:
    """Replace the active key: the old one is revoked, the new one returned once."""
    own = principal.consumer
    if own is not None and own.consumer_id != consumer_id:
        raise NotFound(CONSUMER_NOT_FOUND)
    if repository.get_consumer(connection, consumer_id, lock=True) is None:
        raise NotFound(CONSUMER_NOT_FOUND)
    key, key_hash = issued
    keys_repository.deactivate_active_keys(connection, consumer_id)
    row = keys_repository.insert_key(connection, consumer_id, key.prefix, key_hash)
    return KeyIssued(**row._mapping, api_key=key.full)


def list_keys(connection: Connection, consumer_id: UUID) -> list[KeyOut]:
    get_consumer(connection, consumer_id)
    return [
        KeyOut.model_validate(row._mapping)
        for row in keys_repository.list_keys(connection, consumer_id)
    ]


def revoke_key(connection: Connection, consumer_id: UUID, key_id: UUID) -> KeyOut:
    """Deactivate one key of the consumer (idempotent); NotFound for a foreign key id."""
    row = keys_repository.revoke_key(connection, consumer_id, key_id)
    if row is None:
        raise NotFound(KEY_NOT_FOUND)
    return KeyOut.model_validate(row._mapping)


def register_consumer(
    engine: Engine, settings: Settings, data: ConsumerCreate, origin: EventOrigin, caches: KeyCaches
) -> ConsumerCreated:
    """Create the tenant with its first key (committed), then its queues and broker user; a
    broker that refuses leaves ``queue_provisioned`` / ``broker_provisioned`` false."""
    issued = new_key(settings.bcrypt_rounds)
    with transaction(engine) as connection:
        created = create_consumer(connection, data, issued, origin)
    caches.remember_issued(issued[0])
    created.queue_provisioned = provision_queues(settings, created.name)
    broker = issue_broker_credentials(settings, created.name)
    if broker is not None:
        created.broker = BrokerCredentialsOut(**vars(broker))
        created.broker_provisioned = True
    return created


def change_consumer(
    engine: Engine,
    settings: Settings,
    consumer_id: UUID,
    changes: ConsumerUpdate,
    caches: KeyCaches,
) -> ConsumerOut:
    """Update the consumer and its broker access in one transaction (a broker failure rolls
    the change back), then make this instance re-verify its keys."""
    with transaction(engine) as connection:
        updated = update_consumer(connection, consumer_id, changes)
        sync_broker_access(settings, updated, changes)
    caches.evict_consumer(consumer_id)
    return updated


def replace_key(
    engine: Engine, settings: Settings, principal: Principal, consumer_id: UUID, caches: KeyCaches
) -> KeyIssued:
    """Rotate the consumer's key (committed); the old key stops working on this instance now."""
    issued = new_key(settings.bcrypt_rounds)
    with transaction(engine) as connection:
        key = rotate_key(connection, principal, consumer_id, issued)
    caches.evict_consumer(consumer_id)
    caches.remember_issued(issued[0])
    return key


def revoke_consumer_key(
    engine: Engine, consumer_id: UUID, key_id: UUID, caches: KeyCaches
) -> KeyOut:
    """Revoke one key (committed); it stops working on this instance now."""
    with transaction(engine) as connection:
        key = revoke_key(connection, consumer_id, key_id)
    caches.evict_consumer(consumer_id)
    return key
