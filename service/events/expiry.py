"""The policy for events a tenant never confirms: past the delivery expiry they become final.

A published event still undelivered ``FINTEGRATE_EVENT_DELIVERY_EXPIRY_DAYS`` after its
creation gets ``deliver_status = 'failed'`` and a ``failed`` receipt whose detail says it
expired, in one statement per batch through the parent table (so the maintained counts
follow). It stays listed (``GET /events?deliver_status=failed``) and `events redeliver`
still reaches it until its partition is archived; the archive file keeps it too. So one
tenant that never confirms cannot hold a whole partition back for every tenant.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, text

from service.events.finality import EXPIRABLE_EVENT

BATCH_ROWS = 5_000
EXPIRE_BATCH = text(
    f"""
    WITH due AS (
        SELECT event_id, created_at FROM customer_events
        WHERE created_at < :before
          AND (CAST(:start AS timestamptz) IS NULL OR created_at >= CAST(:start AS timestamptz))
          AND created_at < :end AND {EXPIRABLE_EVENT}
        LIMIT :batch
    ), expired AS (
        UPDATE customer_events e SET deliver_status = 'failed'
        FROM due WHERE e.event_id = due.event_id AND e.created_at = due.created_at
          AND e.created_at < :before
          AND (CAST(:start AS timestamptz) IS NULL OR e.created_at >= CAST(:start AS timestamptz))
          AND e.created_at < :end
        RETURNING e.event_id, e.consumer_id
    ), receipts AS (
        INSERT INTO consumer_event_receipts (event_id, consumer_id, status, detail)
        SELECT event_id, consumer_id, 'failed', :detail FROM expired
        ON CONFLICT ON CONSTRAINT consumer_event_receipts_unique DO NOTHING
    )
    SELECT count(*) FROM expired
    """  # noqa: S608 - the condition is a constant
)


def database_now(connection: Connection) -> datetime:
    now: datetime = connection.execute(text("SELECT now()")).scalar_one()
    return now


def expire_batch(
    connection: Connection,
    before: datetime,
    start: datetime | None,
    end: datetime,
    days: int,
) -> int:
    """Expire up to BATCH_ROWS events created in [start, end) and before ``before``."""
    detail = f"expired: not confirmed within {days} days of its creation (fintegrate maintain)"
    expired: int = connection.execute(
        EXPIRE_BATCH,
        {"before": before, "start": start, "end": end, "batch": BATCH_ROWS, "detail": detail},
    ).scalar_one()
    return expired
