"""SQL of the consumers table: tenants, looked up by id or name (keys: service/auth)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Row, text

INSERT_CONSUMER = text(
    """
    INSERT INTO consumers (name, description, rate_limit_per_minute, rate_limit_burst)
    VALUES (:name, :description, :rate_limit_per_minute, :rate_limit_burst)
    ON CONFLICT (name) DO NOTHING
    RETURNING consumer_id, name, description, status, rate_limit_per_minute, rate_limit_burst,
              created_at, updated_at
    """
)
SELECT_CONSUMER = text(
    """
    SELECT consumer_id, name, description, status, rate_limit_per_minute, rate_limit_burst,
           created_at, updated_at
    FROM consumers WHERE consumer_id = :consumer_id
    """
)
LOCK_CONSUMER = text(SELECT_CONSUMER.text + " FOR UPDATE")
LIST_CONSUMERS = text(
    """
    SELECT consumer_id, name, description, status, rate_limit_per_minute, rate_limit_burst,
           created_at, updated_at
    FROM consumers
    WHERE CAST(:after_at AS timestamptz) IS NULL
       OR (created_at, consumer_id) > (CAST(:after_at AS timestamptz), CAST(:after_id AS uuid))
    ORDER BY created_at, consumer_id
    LIMIT :limit
    """
)
UPDATE_CONSUMER = text(
    """
    UPDATE consumers SET
        status = COALESCE(:status, status),
        description = CASE WHEN :set_description THEN :description ELSE description END,
        rate_limit_per_minute = CASE WHEN :set_per_minute THEN :rate_limit_per_minute
                                     ELSE rate_limit_per_minute END,
        rate_limit_burst = CASE WHEN :set_burst THEN :rate_limit_burst ELSE rate_limit_burst END
    WHERE consumer_id = :consumer_id
    RETURNING consumer_id, name, description, status, rate_limit_per_minute, rate_limit_burst,
              created_at, updated_at
    """
)
CONSUMER_ID_BY_NAME = text("SELECT consumer_id FROM consumers WHERE name = :name")
CONSUMER_NAMES = text("SELECT name FROM consumers ORDER BY name")


def insert_consumer(connection: Connection, fields: dict[str, Any]) -> Row[Any] | None:
    """The new consumer row, or None when the name is taken."""
    return connection.execute(INSERT_CONSUMER, fields).first()


def get_consumer(
    connection: Connection, consumer_id: UUID, *, lock: bool = False
) -> Row[Any] | None:
    statement = LOCK_CONSUMER if lock else SELECT_CONSUMER
    return connection.execute(statement, {"consumer_id": consumer_id}).first()


def list_consumers(connection: Connection, after: dict[str, Any], limit: int) -> Sequence[Row[Any]]:
    return connection.execute(LIST_CONSUMERS, {"limit": limit, **after}).all()


def update_consumer(
    connection: Connection, consumer_id: UUID, changes: dict[str, Any]
) -> Row[Any] | None:
    """Apply ``changes`` (only the keys present); None when the consumer does not exist."""
    params = {
        "consumer_id": consumer_id,
        "status": changes.get("status"),
        "set_description": "description" in changes,
        "description": changes.get("description"),
        "set_per_minute": "rate_limit_per_minute" in changes,
        "rate_limit_per_minute": changes.get("rate_limit_per_minute"),
        "set_burst": "rate_limit_burst" in changes,
        "rate_limit_burst": changes.get("rate_limit_burst"),
    }
    return connection.execute(UPDATE_CONSUMER, params).first()


def consumer_names(connection: Connection) -> list[str]:
    """Every consumer's name, sorted."""
    return list(connection.execute(CONSUMER_NAMES).scalars())


def consumer_id_by_name(connection: Connection, name: str) -> UUID | None:
    return connection.execute(CONSUMER_ID_BY_NAME, {"name": name}).scalar_one_or_none()
