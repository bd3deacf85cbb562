"""Webhook endpoint rules (SPEC 8): tenant-scoped, audited, secrets shown once.

Never commits; the request's session does. Another tenant's endpoint, a deleted one and a
missing one are the same 404.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Row

from service.config import Settings
from service.http.audit import AuditEntry, write_audit_in
from service.kit.errors import NotFound, ServiceUnavailable, Unprocessable
from service.kit.pagination import build_page, cursor_params, decode_cursor
from service.webhooks import repository
from service.webhooks.delivery import repository as deliveries
from service.webhooks.destinations import DestinationPolicy, DestinationRefused, check_destination
from service.webhooks.schemas import (
    AttemptOut,
    EndpointCreate,
    EndpointDeleted,
    EndpointOut,
    EndpointUpdate,
    EndpointWithSecret,
    RecoverOutcome,
    RecoverRequest,
    SecretRotated,
)
from service.webhooks.signing import SecretBox, SecretsUnavailable, new_secret

ENDPOINT_NOT_FOUND = "Webhook endpoint not found"


def secret_box(settings: Settings) -> SecretBox:
    """The configured box; 503 with what to set when webhooks have no encryption key."""
    try:
        return SecretBox(settings.webhooks.encryption_key, settings.environment)
    except SecretsUnavailable as exc:
        raise ServiceUnavailable(str(exc)) from exc


def destination_policy(settings: Settings) -> DestinationPolicy:
    return DestinationPolicy.from_settings(settings.environment, settings.webhooks.allowed_cidrs)


def require_endpoint(
    connection: Connection, consumer_id: UUID, endpoint_id: UUID, *, lock: bool = False
) -> Row[Any]:
    row = repository.get_endpoint(connection, consumer_id, endpoint_id, lock=lock)
    if row is None:
        raise NotFound(ENDPOINT_NOT_FOUND)
    return row


def create_endpoint(
    connection: Connection,
    consumer_id: UUID,
    body: EndpointCreate,
    settings: Settings,
    request_id: str | None = None,
) -> EndpointWithSecret:
    """Check the destination, store the endpoint and its sealed secret; the secret once."""
    box = secret_box(settings)
    _check_url(body.url, settings)
    row = repository.insert_endpoint(
        connection, consumer_id, body.url, body.description, _types(body.event_types)
    )
    secret = new_secret()
    repository.insert_secret(connection, row.endpoint_id, box.seal(secret, str(row.endpoint_id)))
    _audit(connection, (consumer_id, request_id), "webhook_endpoint_created", row.endpoint_id)
    return EndpointWithSecret(**_endpoint(row).model_dump(), secret=secret)


def list_endpoints(
    connection: Connection, consumer_id: UUID, cursor: str | None, limit: int
) -> dict[str, Any]:
    after = cursor_params(decode_cursor(cursor))
    rows = repository.list_endpoints(connection, consumer_id, after, limit + 1)
    items = [_endpoint(row) for row in rows]
    return build_page(items, limit, lambda item: (item.created_at, item.endpoint_id))


def get_endpoint(connection: Connection, consumer_id: UUID, endpoint_id: UUID) -> EndpointOut:
    return _endpoint(require_endpoint(connection, consumer_id, endpoint_id))


def update_endpoint(
    connection: Connection,
    consumer_id: UUID,
    endpoint_id: UUID,
    body: EndpointUpdate,
    settings: Settings,
    request_id: str | None = None,
) -> EndpointOut:
    """Change url, event_types, description or status; a new url is checked like a new one."""
    require_endpoint(connection, consumer_id, endpoint_id, lock=True)
    changes = body.model_dump(include=body.model_fields_set)
    if "url" in changes:
        _check_url(changes["url"], settings)
    if "event_types" in changes:
        changes["event_types"] = _types(body.event_types)
    row = repository.update_endpoint(connection, consumer_id, endpoint_id, changes)
    if row is None:
        raise NotFound(ENDPOINT_NOT_FOUND)
    _audit(
        connection,
        (consumer_id, request_id),
        "webhook_endpoint_updated",
        endpoint_id,
        changed=sorted(changes),
    )
    return _endpoint(row)


def delete_endpoint(
    connection: Connection, consumer_id: UUID, endpoint_id: UUID, request_id: str | None = None
) -> EndpointDeleted:
    """Delete the endpoint; its pending deliveries are cancelled (final for archiving)."""
    require_endpoint(connection, consumer_id, endpoint_id, lock=True)
    repository.soft_delete_endpoint(connection, consumer_id, endpoint_id)
    cancelled = deliveries.cancel_pending(connection, endpoint_id)
    _audit(
        connection,
        (consumer_id, request_id),
        "webhook_endpoint_deleted",
        endpoint_id,
        cancelled=cancelled,
    )
    return EndpointDeleted(endpoint_id=endpoint_id, deleted=True, cancelled_deliveries=cancelled)


def rotate_secret(
    connection: Connection,
    consumer_id: UUID,
    endpoint_id: UUID,
    settings: Settings,
    request_id: str | None = None,
) -> SecretRotated:
    """A new current secret; the old one signs too until the grace ends."""
    box = secret_box(settings)
    require_endpoint(connection, consumer_id, endpoint_id, lock=True)
    grace = settings.webhooks.secret_grace_seconds
    expires_at = repository.expire_current_secret(connection, endpoint_id, grace)
    secret = new_secret()
    repository.insert_secret(connection, endpoint_id, box.seal(secret, str(endpoint_id)))
    _audit(
        connection,
        (consumer_id, request_id),
        "webhook_secret_rotated",
        endpoint_id,
        grace_seconds=grace,
    )
    return SecretRotated(
        endpoint_id=endpoint_id, secret=secret, previous_secret_expires_at=expires_at
    )


def list_attempts(
    connection: Connection,
    consumer_id: UUID,
    endpoint_id: UUID,
    event_id: UUID | None,
    status: str | None,
    cursor: str | None,
    limit: int,
) -> dict[str, Any]:
    """The endpoint's attempts, oldest first, optionally one event's or one status's."""
    require_endpoint(connection, consumer_id, endpoint_id)
    after = cursor_params(decode_cursor(cursor))
    rows = deliveries.list_attempts(connection, endpoint_id, event_id, status, after, limit + 1)
    items = [AttemptOut.model_validate(row._mapping) for row in rows]
    return build_page(items, limit, lambda item: (item.started_at, item.attempt_id))


def recover(
    connection: Connection,
    consumer_id: UUID,
    endpoint_id: UUID,
    body: RecoverRequest,
    request_id: str | None = None,
) -> RecoverOutcome:
    """Queue the window's events again; the delivery process sends them in order."""
    endpoint = require_endpoint(connection, consumer_id, endpoint_id, lock=True)
    queued = deliveries.recover_window(
        connection, endpoint_id, consumer_id, body.since, body.until, endpoint.event_types
    )
    _audit(connection, (consumer_id, request_id), "webhook_recover", endpoint_id, queued=queued)
    return RecoverOutcome(
        endpoint_id=endpoint_id, since=body.since, until=body.until, queued=queued
    )


def _check_url(url: str, settings: Settings) -> None:
    try:
        check_destination(url, destination_policy(settings))
    except DestinationRefused as exc:
        raise Unprocessable(f"url refused: {exc}") from exc


def _types(event_types: Sequence[str] | None) -> list[str] | None:
    return sorted(set(event_types)) if event_types is not None else None


def _endpoint(row: Row[Any]) -> EndpointOut:
    return EndpointOut.model_validate(row._mapping)


def _audit(
    connection: Connection,
    caller: tuple[UUID, str | None],
    action: str,
    endpoint_id: UUID,
    **detail: Any,
) -> None:
    """An audit row in the change's transaction; ``caller`` is (consumer_id, request_id)."""
    consumer_id, request_id = caller
    write_audit_in(
        connection,
        AuditEntry(
            actor=f"consumer:{consumer_id}",
            action=action,
            request_id=request_id,
            consumer_id=consumer_id,
            detail={"endpoint_id": str(endpoint_id), **detail},
        ),
    )


def delivery_backlog(connection: Connection, consumer_id: UUID | None) -> dict[str, Any]:
    """Pending and failed webhook deliveries (``events stats``), all consumers or one."""
    return deliveries.channel_backlog(connection, consumer_id)
