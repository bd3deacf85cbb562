"""SQL of webhook_endpoints and webhook_endpoint_secrets; every tenant statement filters by
consumer_id, and a deleted endpoint is invisible (a 404 like a missing one)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Row, text

ENDPOINT_COLUMNS = """
    endpoint_id, consumer_id, url, description, event_types, status, disabled_reason,
    consecutive_failures, failing_since, paused_until, created_at, updated_at
"""

INSERT_ENDPOINT = text(
    f"""
    INSERT INTO webhook_endpoints (consumer_id, url, description, event_types)
    VALUES (:consumer_id, :url, :description, CAST(:event_types AS text[]))
    RETURNING {ENDPOINT_COLUMNS}
    """  # noqa: S608 - constant column list
)
SELECT_ENDPOINT = text(
    f"""
    SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints
    WHERE endpoint_id = :endpoint_id AND consumer_id = :consumer_id AND deleted_at IS NULL
    """  # noqa: S608
)
LIST_ENDPOINTS = text(
    f"""
    SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints
    WHERE consumer_id = :consumer_id AND deleted_at IS NULL
      AND (CAST(:after_at AS timestamptz) IS NULL
           OR (created_at, endpoint_id) > (CAST(:after_at AS timestamptz),
                                           CAST(:after_id AS uuid)))
    ORDER BY created_at, endpoint_id
    LIMIT :limit
    """  # noqa: S608
)
SOFT_DELETE_ENDPOINT = text(
    """
    UPDATE webhook_endpoints SET deleted_at = now(), status = 'disabled',
        disabled_reason = 'deleted'
    WHERE endpoint_id = :endpoint_id AND consumer_id = :consumer_id AND deleted_at IS NULL
    RETURNING endpoint_id
    """
)
# The endpoint row the delivery process needs with its live secrets (current first).
SELECT_FOR_DELIVERY = text(
    """
    SELECT w.endpoint_id, w.consumer_id, w.url, w.status, w.deleted_at,
           array_agg(s.ciphertext ORDER BY s.expires_at DESC NULLS FIRST)
               FILTER (WHERE s.secret_id IS NOT NULL) AS sealed_secrets
    FROM webhook_endpoints w
    LEFT JOIN webhook_endpoint_secrets s
      ON s.endpoint_id = w.endpoint_id AND (s.expires_at IS NULL OR s.expires_at > now())
    WHERE w.endpoint_id = :endpoint_id
    GROUP BY w.endpoint_id
    """
)
# One attempt's effect on the endpoint's health: success resets it; failure counts, opens
# the breaker at the threshold (pause, then one probe at a time) and disables the endpoint
# once it has failed for the whole disable window. Returns whether this call disabled it.
# A success on a healthy endpoint changes nothing and takes no row lock, so concurrent
# deliveries to one endpoint do not queue on its row.
RECORD_HEALTH = text(
    """
    UPDATE webhook_endpoints w SET
        consecutive_failures = CASE WHEN :ok THEN 0 ELSE w.consecutive_failures + 1 END,
        failing_since = CASE WHEN :ok THEN NULL ELSE coalesce(w.failing_since, now()) END,
        paused_until = CASE
            WHEN :ok THEN NULL
            WHEN w.consecutive_failures + 1 >= :breaker_failures
                THEN now() + make_interval(secs => CAST(:pause AS float8))
            ELSE w.paused_until END,
        status = CASE
            WHEN NOT :ok AND w.failing_since IS NOT NULL
                 AND w.failing_since < now() - make_interval(secs => CAST(:disable AS float8))
                THEN 'disabled' ELSE w.status END,
        disabled_reason = CASE
            WHEN NOT :ok AND w.status = 'enabled' AND w.failing_since IS NOT NULL
                 AND w.failing_since < now() - make_interval(secs => CAST(:disable AS float8))
                THEN 'failing' ELSE w.disabled_reason END
    FROM (SELECT status AS before FROM webhook_endpoints WHERE endpoint_id = :endpoint_id) b
    WHERE w.endpoint_id = :endpoint_id
      AND NOT (:ok AND w.consecutive_failures = 0 AND w.failing_since IS NULL
               AND w.paused_until IS NULL)
    RETURNING w.consumer_id, b.before = 'enabled' AND w.status = 'disabled' AS disabled_now
    """
)
# RECORD_HEALTH's success for many endpoints at once (rows already healthy are not touched).
RECORD_HEALTHY = text(
    """
    UPDATE webhook_endpoints
    SET consecutive_failures = 0, failing_since = NULL, paused_until = NULL
    WHERE endpoint_id = ANY(CAST(:endpoint_ids AS uuid[]))
      AND NOT (consecutive_failures = 0 AND failing_since IS NULL AND paused_until IS NULL)
    """
)
DISABLE_ENDPOINT = text(
    """
    UPDATE webhook_endpoints SET status = 'disabled', disabled_reason = :reason
    WHERE endpoint_id = :endpoint_id AND status = 'enabled'
    RETURNING consumer_id
    """
)
EXPIRE_CURRENT_SECRET = text(
    """
    UPDATE webhook_endpoint_secrets
    SET expires_at = now() + make_interval(secs => CAST(:grace AS float8))
    WHERE endpoint_id = :endpoint_id AND expires_at IS NULL
    RETURNING expires_at
    """
)
INSERT_SECRET = text(
    """
    INSERT INTO webhook_endpoint_secrets (endpoint_id, ciphertext)
    VALUES (:endpoint_id, :ciphertext)
    """
)
LOCK_ENDPOINT = text(
    """
    SELECT endpoint_id FROM webhook_endpoints
    WHERE endpoint_id = :endpoint_id AND consumer_id = :consumer_id AND deleted_at IS NULL
    FOR UPDATE
    """
)
UPDATABLE = ("url", "description", "event_types", "status")


def insert_endpoint(
    connection: Connection,
    consumer_id: UUID,
    url: str,
    description: str | None,
    event_types: list[str] | None,
) -> Row[Any]:
    params = {
        "consumer_id": consumer_id,
        "url": url,
        "description": description,
        "event_types": event_types,
    }
    return connection.execute(INSERT_ENDPOINT, params).one()


def get_endpoint(
    connection: Connection, consumer_id: UUID, endpoint_id: UUID, *, lock: bool = False
) -> Row[Any] | None:
    """The tenant's live endpoint, or None (missing, deleted or another tenant's)."""
    params = {"endpoint_id": endpoint_id, "consumer_id": consumer_id}
    if lock and connection.execute(LOCK_ENDPOINT, params).first() is None:
        return None
    return connection.execute(SELECT_ENDPOINT, params).first()


def list_endpoints(
    connection: Connection, consumer_id: UUID, after: dict[str, Any], limit: int
) -> Sequence[Row[Any]]:
    params = {"consumer_id": consumer_id, "limit": limit, **after}
    return connection.execute(LIST_ENDPOINTS, params).all()


def update_endpoint(
    connection: Connection, consumer_id: UUID, endpoint_id: UUID, changes: dict[str, Any]
) -> Row[Any] | None:
    """Set the given columns (names from ``UPDATABLE`` only); re-enabling clears the health."""
    columns = [name for name in UPDATABLE if name in changes]
    assignments = [
        f"{name} = CAST(:{name} AS text[])" if name == "event_types" else f"{name} = :{name}"
        for name in columns
    ]
    if changes.get("status") == "enabled":
        assignments += [
            "disabled_reason = NULL",
            "consecutive_failures = 0",
            "failing_since = NULL",
            "paused_until = NULL",
        ]
    elif changes.get("status") == "disabled":
        assignments.append("disabled_reason = 'by the tenant'")
    statement = text(
        f"UPDATE webhook_endpoints SET {', '.join(assignments)}"  # noqa: S608 - fixed names
        " WHERE endpoint_id = :endpoint_id AND consumer_id = :consumer_id"
        f" AND deleted_at IS NULL RETURNING {ENDPOINT_COLUMNS}"
    )
    params = {name: changes[name] for name in columns}
    params |= {"endpoint_id": endpoint_id, "consumer_id": consumer_id}
    return connection.execute(statement, params).first()


def soft_delete_endpoint(connection: Connection, consumer_id: UUID, endpoint_id: UUID) -> bool:
    params = {"endpoint_id": endpoint_id, "consumer_id": consumer_id}
    return connection.execute(SOFT_DELETE_ENDPOINT, params).first() is not None


def insert_secret(connection: Connection, endpoint_id: UUID, ciphertext: bytes) -> None:
    connection.execute(INSERT_SECRET, {"endpoint_id": endpoint_id, "ciphertext": ciphertext})


def expire_current_secret(connection: Connection, endpoint_id: UUID, grace_seconds: float) -> Any:
    """Start the current secret's grace; its new expiry (None when there was none)."""
    params = {"endpoint_id": endpoint_id, "grace": grace_seconds}
    return connection.execute(EXPIRE_CURRENT_SECRET, params).scalar()


def endpoint_for_delivery(connection: Connection, endpoint_id: UUID) -> Row[Any] | None:
    """URL, status and the sealed live secrets (current first) of any endpoint."""
    return connection.execute(SELECT_FOR_DELIVERY, {"endpoint_id": endpoint_id}).first()


def record_health(
    connection: Connection,
    endpoint_id: UUID,
    ok: bool,
    breaker_failures: int,
    pause_seconds: float,
    disable_after_seconds: float,
) -> Row[Any] | None:
    """Apply one attempt's outcome to the endpoint (breaker, auto-disable); see RECORD_HEALTH."""
    params = {
        "endpoint_id": endpoint_id,
        "ok": ok,
        "breaker_failures": breaker_failures,
        "pause": pause_seconds,
        "disable": disable_after_seconds,
    }
    return connection.execute(RECORD_HEALTH, params).first()


def record_healthy(connection: Connection, endpoint_ids: Sequence[UUID]) -> None:
    """Apply a successful attempt to each endpoint (RECORD_HEALTH with ``ok``)."""
    if endpoint_ids:
        connection.execute(RECORD_HEALTHY, {"endpoint_ids": list(endpoint_ids)})


def disable_endpoint(connection: Connection, endpoint_id: UUID, reason: str) -> UUID | None:
    """Disable an enabled endpoint; its consumer_id, or None when it was not enabled."""
    params = {"endpoint_id": endpoint_id, "reason": reason}
    value: UUID | None = connection.execute(DISABLE_ENDPOINT, params).scalar()
    return value
