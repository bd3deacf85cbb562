"""SQL of the auth path: key lookup by prefix and the throttled last-use write."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from sqlalchemy import Connection, text

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


def find_key(connection: Connection, prefix: str) -> Any | None:
    """The key row with its consumer's status and limits, or None."""
    return connection.execute(FIND_KEY, {"prefix": prefix}).first()


def touch_last_used(connection: Connection, key_id: UUID) -> None:
    """Record that ``key_id`` was used now."""
    connection.execute(TOUCH_LAST_USED, {"key_id": key_id})
