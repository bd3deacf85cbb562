"""SQL of the consumer_api_keys table: issue, rotate, list and revoke keys, the lookup by
prefix on every request and the throttled last-use write."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Row, text

# The key with its consumer's status and limits in one statement: the lookup of every
# authenticated request. It reads consumers (owner: service/consumers/repository.py).
FIND_KEY = text(
    """
    SELECT k.key_id, k.consumer_id, k.key_hash, k.is_active,
           k.expires_at IS NOT NULL AND k.expires_at <= now() AS is_expired,
           c.name, c.status, c.rate_limit_per_minute, c.rate_limit_burst
    FROM consumer_api_keys AS k
    JOIN consumers AS c ON c.consumer_id = k.consumer_id
    WHERE k.key_prefix = :prefix
    """
)

TOUCH_LAST_USED = text("UPDATE consumer_api_keys SET last_used_at = now() WHERE key_id = :key_id")
INSERT_KEY = text(
    """
    INSERT INTO consumer_api_keys (consumer_id, key_prefix, key_hash)
    VALUES (:consumer_id, :key_prefix, :key_hash)
    RETURNING key_id, consumer_id, key_prefix, is_active, created_at, last_used_at,
              revoked_at, expires_at
    """
)
DEACTIVATE_ACTIVE_KEYS = text(
    """
    UPDATE consumer_api_keys SET is_active = false, revoked_at = now()
    WHERE consumer_id = :consumer_id AND is_active
    """
)
LIST_KEYS = text(
    """
    SELECT key_id, consumer_id, key_prefix, is_active, created_at, last_used_at,
           revoked_at, expires_at
    FROM consumer_api_keys WHERE consumer_id = :consumer_id
    ORDER BY created_at, key_id
    """
)
REVOKE_KEY = text(
    """
    UPDATE consumer_api_keys
    SET is_active = false, revoked_at = COALESCE(revoked_at, now())
    WHERE consumer_id = :consumer_id AND key_id = :key_id
    RETURNING key_id, consumer_id, key_prefix, is_active, created_at, last_used_at,
              revoked_at, expires_at
    """
)


def find_key(connection: Connection, prefix: str) -> Any | None:
    """The key row with its consumer's status and limits, or None."""
    return connection.execute(FIND_KEY, {"prefix": prefix}).first()


def touch_last_used(connection: Connection, key_id: UUID) -> None:
    """Record that ``key_id`` was used now."""
    connection.execute(TOUCH_LAST_USED, {"key_id": key_id})


def insert_key(
    connection: Connection, consumer_id: UUID, key_prefix: str, key_hash: str
) -> Row[Any]:
    params = {"consumer_id": consumer_id, "key_prefix": key_prefix, "key_hash": key_hash}
    return connection.execute(INSERT_KEY, params).one()


def deactivate_active_keys(connection: Connection, consumer_id: UUID) -> None:
    connection.execute(DEACTIVATE_ACTIVE_KEYS, {"consumer_id": consumer_id})


def list_keys(connection: Connection, consumer_id: UUID) -> Sequence[Row[Any]]:
    return connection.execute(LIST_KEYS, {"consumer_id": consumer_id}).all()


def revoke_key(connection: Connection, consumer_id: UUID, key_id: UUID) -> Row[Any] | None:
    params = {"consumer_id": consumer_id, "key_id": key_id}
    return connection.execute(REVOKE_KEY, params).first()
