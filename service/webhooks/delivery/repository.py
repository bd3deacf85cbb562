"""SQL of webhook_deliveries and webhook_attempts: claims, outcomes, listings, recovery.

Order (SPEC 8): a pending delivery is claimable only when every earlier pending delivery of
its aggregate (``coalesce(customer_id, consumer_id)``, by ``sequence``) for the same
endpoint is claimed by this process or claimable with it; the row names the one before it
(``after_delivery_id``) and the process sends it only once that one's 2xx is in
(lanes.py), so one customer's events reach an endpoint in sequence order and a retrying
event holds back only its own customer there. An endpoint's deliveries are claimed by one
process at a time (none while another's claims on it are live), up to a budget of held
rows; that process keeps the in-flight cap, so the cap is exact across processes. Claims
run one at a time (a transaction-scoped advisory lock); each claim bumps the row's
``claim_token`` and an outcome (or a release) is recorded only with that token.
A claim walks each open endpoint's due heads only as far as the endpoint's free room
(``ix_webhook_deliveries_endpoint_due``) and takes them round-robin across endpoints, so
its cost follows what it claims, not the backlog. The head check looks for the first
blocking earlier row in ``ix_webhook_deliveries_pending_aggregate`` order: as a NOT EXISTS,
a table without statistics yet (a burst into a fresh table) got a plan that scanned every
pending row of the endpoint per candidate (2 s per claim at 2,000 rows per endpoint).

Reads of customer_events (the message to send, recover's window) and consumers (the name
in the body; a disabled tenant's deliveries wait) are this room's on purpose: one statement
with the claim (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Row, text

from service.kit.prepared import PreparedStatement

# Claims and outcomes need not wait for the WAL flush (SET LOCAL): a crash that loses the
# last of them only makes a claim lapse or an event be POSTed again with the same webhook-id
# (delivery is at least once), never loses or reorders a delivery (the fan-out rows commit
# with the event, synchronously).
CLAIM_LOCK = text(
    "SET LOCAL synchronous_commit = off;"
    " SELECT pg_advisory_xact_lock(hashtext('fintegrate_webhook_claims'))"
)
CLAIM = text(
    """
    WITH open_endpoints AS (
        SELECT w.endpoint_id,
               CASE WHEN held.by_others THEN 0
                    ELSE (CASE WHEN w.consecutive_failures >= :breaker_failures THEN 1
                               ELSE :budget END) - held.live
               END AS room
        FROM webhook_endpoints w
        CROSS JOIN LATERAL (
            SELECT count(*) AS live,
                   coalesce(bool_or(f.claimed_by <> :worker_id), false) AS by_others
            FROM webhook_deliveries f
            WHERE f.endpoint_id = w.endpoint_id AND f.status = 'pending'
              AND f.claimed_until IS NOT NULL AND f.claimed_until >= now()) AS held
        WHERE w.status = 'enabled' AND w.deleted_at IS NULL
          AND (w.paused_until IS NULL OR w.paused_until <= now())
          AND EXISTS (SELECT 1 FROM consumers t
                      WHERE t.consumer_id = w.consumer_id AND t.status = 'active')
    ), heads AS (
        SELECT h.delivery_id, h.next_attempt_at,
               row_number() OVER (PARTITION BY o.endpoint_id
                                  ORDER BY h.next_attempt_at, h.sequence) AS rank
        FROM (SELECT * FROM open_endpoints WHERE room > 0) AS o
        CROSS JOIN LATERAL (
            SELECT d.delivery_id, d.next_attempt_at, d.sequence
            FROM webhook_deliveries d
            WHERE d.endpoint_id = o.endpoint_id AND d.status = 'pending'
              AND d.next_attempt_at <= now()
              AND (d.claimed_until IS NULL OR d.claimed_until < now())
              AND (SELECT b.sequence FROM webhook_deliveries b
                   WHERE b.status = 'pending' AND b.aggregate_id = d.aggregate_id
                     AND b.endpoint_id = d.endpoint_id AND b.sequence < d.sequence
                     AND NOT (b.claimed_until >= now() AND b.claimed_by = :worker_id)
                     AND NOT (b.next_attempt_at <= now()
                              AND (b.claimed_until IS NULL OR b.claimed_until < now()))
                   ORDER BY b.aggregate_id, b.endpoint_id, b.sequence
                   LIMIT 1) IS NULL
            ORDER BY d.next_attempt_at, d.sequence
            LIMIT greatest(o.room, 0)) AS h
    ), chosen AS (
        SELECT delivery_id FROM heads ORDER BY rank, next_attempt_at LIMIT :limit
    ), claimed AS (
        UPDATE webhook_deliveries d
        SET claimed_by = :worker_id, claim_token = d.claim_token + 1,
            claimed_until = now() + make_interval(secs => CAST(:claim_seconds AS float8))
        FROM chosen WHERE d.delivery_id = chosen.delivery_id
        RETURNING d.delivery_id, d.endpoint_id, d.event_id, d.event_created_at,
                  d.attempt_count, d.claim_token, d.aggregate_id,
                  d.sequence AS delivery_sequence
    )
    SELECT claimed.*, e.customer_id, e.consumer_id, e.event_type, e.payload_json,
           e.metadata_json, e.created_at, e.sequence, e.traceparent, c.name AS consumer_name,
           (SELECT p.delivery_id FROM webhook_deliveries p
            WHERE p.status = 'pending' AND p.endpoint_id = claimed.endpoint_id
              AND p.aggregate_id = claimed.aggregate_id
              AND p.sequence < claimed.delivery_sequence
            ORDER BY p.sequence DESC LIMIT 1) AS after_delivery_id
    FROM claimed
    JOIN customer_events e
      ON e.event_id = claimed.event_id AND e.created_at = claimed.event_created_at
    LEFT JOIN consumers c ON c.consumer_id = e.consumer_id
    """
)
# The claim is planned once per session (its planning cost 2-13 ms a turn on a busy
# machine) and sent with the lock in one round trip.
PREPARED_CLAIM = PreparedStatement(
    "fintegrate_webhook_claim",
    CLAIM,
    (
        ("worker_id", "text"),
        ("limit", "integer"),
        ("budget", "integer"),
        ("breaker_failures", "integer"),
        ("claim_seconds", "float8"),
    ),
    before=CLAIM_LOCK.text,
)
# Claimed rows this process will not send after all (their predecessor failed, or they
# waited too long): claimable again at once, each fenced by its claim's token.
RELEASE_CLAIMS = text(
    """
    UPDATE webhook_deliveries d SET claimed_by = NULL, claimed_until = NULL
    FROM unnest(CAST(:delivery_ids AS uuid[]), CAST(:claim_tokens AS bigint[]))
         AS r(delivery_id, claim_token)
    WHERE d.delivery_id = r.delivery_id AND d.claim_token = r.claim_token
      AND d.status = 'pending'
    """
)
# The outcomes of a batch of attempts and their attempt rows, in one round trip, each fenced
# by its claim's token: a process whose claim lapsed and was taken over records nothing.
ATTEMPT_FIELDS = (
    ("delivery_id", "uuid"),
    ("claim_token", "bigint"),
    ("delivery_status", "text"),
    ("attempt_number", "integer"),
    ("attempt_status", "text"),
    ("started_at", "timestamptz"),
    ("duration_ms", "integer"),
    ("response_status", "integer"),
    ("response_body", "text"),
    ("error", "text"),
    ("next_attempt_at", "timestamptz"),
)
RECORD_ATTEMPTS = text(
    "SET LOCAL synchronous_commit = off; WITH outcome AS (SELECT * FROM unnest("  # noqa: S608
    + ", ".join(f"CAST(:{name} AS {kind}[])" for name, kind in ATTEMPT_FIELDS)
    + ") AS o("
    + ", ".join(name for name, _ in ATTEMPT_FIELDS)
    + """)
    ), moved AS (
        UPDATE webhook_deliveries d
        SET status = o.delivery_status, attempt_count = d.attempt_count + 1,
            next_attempt_at = coalesce(o.next_attempt_at, d.next_attempt_at),
            delivered_at = CASE WHEN o.delivery_status = 'delivered' THEN now()
                                ELSE d.delivered_at END,
            last_error = o.error, claimed_by = NULL, claimed_until = NULL
        FROM outcome o
        WHERE d.delivery_id = o.delivery_id AND d.claim_token = o.claim_token
          AND d.status = 'pending'
        RETURNING d.delivery_id, d.endpoint_id, d.event_id
    )
    INSERT INTO webhook_attempts
        (delivery_id, endpoint_id, event_id, attempt_number, status, started_at, duration_ms,
         response_status, response_body, error, next_attempt_at)
    SELECT m.delivery_id, m.endpoint_id, m.event_id, o.attempt_number, o.attempt_status,
           o.started_at, o.duration_ms, o.response_status, o.response_body, o.error,
           o.next_attempt_at
    FROM moved m JOIN outcome o ON o.delivery_id = m.delivery_id
    RETURNING delivery_id
    """
)
LIST_ATTEMPTS = text(
    """
    SELECT attempt_id, event_id, attempt_number, status, started_at, duration_ms,
           response_status, response_body, error, next_attempt_at
    FROM webhook_attempts
    WHERE endpoint_id = :endpoint_id
      AND (CAST(:event_id AS uuid) IS NULL OR event_id = CAST(:event_id AS uuid))
      AND (CAST(:status AS text) IS NULL OR status = CAST(:status AS text))
      AND (CAST(:after_at AS timestamptz) IS NULL
           OR (started_at, attempt_id) > (CAST(:after_at AS timestamptz),
                                          CAST(:after_id AS uuid)))
    ORDER BY started_at, attempt_id
    LIMIT :limit
    """
)
CANCEL_PENDING = text(
    """
    UPDATE webhook_deliveries SET status = 'cancelled', claimed_until = NULL
    WHERE endpoint_id = :endpoint_id AND status = 'pending'
    """
)
# The window again: every event of the tenant in it that the endpoint's filter admits,
# pending anew (a delivery still pending is left as it is). Sent in sequence order per
# aggregate by the claim rule.
RECOVER_WINDOW = text(
    """
    INSERT INTO webhook_deliveries
        (endpoint_id, consumer_id, event_id, event_created_at, aggregate_id, sequence)
    SELECT :endpoint_id, e.consumer_id, e.event_id, e.created_at,
           coalesce(e.customer_id, e.consumer_id), e.sequence
    FROM customer_events e
    WHERE e.consumer_id = :consumer_id AND e.created_at >= :since
      AND (CAST(:until AS timestamptz) IS NULL OR e.created_at < CAST(:until AS timestamptz))
      AND (CAST(:event_types AS text[]) IS NULL
           OR e.event_type = ANY (CAST(:event_types AS text[])))
    ON CONFLICT ON CONSTRAINT webhook_deliveries_endpoint_event DO UPDATE
    SET status = 'pending', attempt_count = 0, next_attempt_at = now(), last_error = NULL,
        delivered_at = NULL, claimed_by = NULL, claimed_until = NULL
    WHERE webhook_deliveries.status <> 'pending'
    RETURNING delivery_id
    """
)
PENDING_IN_RANGE = text(
    """
    SELECT count(*) FROM webhook_deliveries d
    WHERE d.status = 'pending' AND d.event_created_at < :end
      AND (CAST(:start AS timestamptz) IS NULL
           OR d.event_created_at >= CAST(:start AS timestamptz))
      AND EXISTS (SELECT 1 FROM webhook_endpoints w
                  WHERE w.endpoint_id = d.endpoint_id
                    AND w.status = 'enabled' AND w.deleted_at IS NULL)
    """
)
CHANNEL_BACKLOG = text(
    """
    SELECT status, count(*) AS deliveries, min(event_created_at) AS oldest_event_at
    FROM webhook_deliveries
    WHERE status IN ('pending', 'failed')
      AND (CAST(:consumer_id AS uuid) IS NULL OR consumer_id = CAST(:consumer_id AS uuid))
    GROUP BY status
    """
)
EVENT_DELIVERIES = text(
    """
    SELECT endpoint_id, status, attempt_count, delivered_at, last_error
    FROM webhook_deliveries WHERE event_id = :event_id AND consumer_id = :consumer_id
    ORDER BY created_at
    """
)


def claim_due(
    connection: Connection,
    worker_id: str,
    limit: int,
    budget: int,
    breaker_failures: int,
    claim_seconds: float,
) -> Sequence[Row[Any]]:
    """Claim up to ``limit`` due deliveries (at most ``budget`` held per endpoint, one while
    its breaker is open) with their event rows and ``after_delivery_id``."""
    params = {
        "worker_id": worker_id,
        "limit": limit,
        "budget": budget,
        "breaker_failures": breaker_failures,
        "claim_seconds": claim_seconds,
    }
    return PREPARED_CLAIM.execute(connection, params).all()


def record_attempts(connection: Connection, attempts: Sequence[dict[str, Any]]) -> set[UUID]:
    """Record attempts on their deliveries (each a dict of ``ATTEMPT_FIELDS``); the
    deliveries recorded (a claim that was lost records nothing)."""
    if not attempts:
        return set()
    columns = {name: [attempt[name] for attempt in attempts] for name, _ in ATTEMPT_FIELDS}
    return set(connection.execute(RECORD_ATTEMPTS, columns).scalars())


def release_claims(connection: Connection, rows: Sequence[Any]) -> None:
    """Clear the claims of ``rows`` (``delivery_id``, ``claim_token``) not sent after all."""
    if rows:
        params = {
            "delivery_ids": [row.delivery_id for row in rows],
            "claim_tokens": [row.claim_token for row in rows],
        }
        connection.execute(RELEASE_CLAIMS, params)


def list_attempts(
    connection: Connection,
    endpoint_id: UUID,
    event_id: UUID | None,
    status: str | None,
    after: dict[str, Any],
    limit: int,
) -> Sequence[Row[Any]]:
    params = {
        "endpoint_id": endpoint_id,
        "event_id": event_id,
        "status": status,
        "limit": limit,
        **after,
    }
    return connection.execute(LIST_ATTEMPTS, params).all()


def cancel_pending(connection: Connection, endpoint_id: UUID) -> int:
    """Cancel the endpoint's pending deliveries (it was deleted); how many."""
    return connection.execute(CANCEL_PENDING, {"endpoint_id": endpoint_id}).rowcount


def recover_window(
    connection: Connection,
    endpoint_id: UUID,
    consumer_id: UUID,
    since: datetime,
    until: datetime | None,
    event_types: list[str] | None,
) -> int:
    """Queue the window's events again for the endpoint; how many were queued."""
    params = {
        "endpoint_id": endpoint_id,
        "consumer_id": consumer_id,
        "since": since,
        "until": until,
        "event_types": event_types,
    }
    return len(connection.execute(RECOVER_WINDOW, params).all())


def pending_in_range(connection: Connection, start: datetime | None, end: datetime) -> int:
    """Pending deliveries to enabled endpoints of events created in [start, end): not final
    for archiving. A disabled endpoint (by its tenant, a 410, or after failing for
    FINTEGRATE_WEBHOOK_DISABLE_AFTER_HOURS) holds no history back: one silent tenant must
    not stop archiving for all; its events stay in the archive files."""
    count: int = connection.execute(PENDING_IN_RANGE, {"start": start, "end": end}).scalar_one()
    return count


def event_deliveries(connection: Connection, consumer_id: UUID, event_id: UUID) -> list[Any]:
    """The webhook channel's state of one event, one row per endpoint."""
    params = {"event_id": event_id, "consumer_id": consumer_id}
    return list(connection.execute(EVENT_DELIVERIES, params).all())


def channel_backlog(connection: Connection, consumer_id: UUID | None) -> dict[str, Any]:
    """Pending and failed webhook deliveries (all consumers or one), with the oldest pending."""
    rows = {
        row.status: row for row in connection.execute(CHANNEL_BACKLOG, {"consumer_id": consumer_id})
    }
    pending, failed = rows.get("pending"), rows.get("failed")
    return {
        "pending": int(pending.deliveries) if pending else 0,
        "failed": int(failed.deliveries) if failed else 0,
        "oldest_pending_event_at": pending.oldest_event_at if pending else None,
    }
