"""SQL of the transactional outbox: find publishable events, record publish outcomes.

Ordering (SPEC 5): an event goes to the broker only after every earlier pending event of
its aggregate (``coalesce(customer_id, consumer_id)``, ordered by ``sequence``) has been
confirmed. The relay reads without row locks (its partition lease makes it the only relay
on those aggregates); each round:

1. ``DUE_HEADS``: per tenant (``consumer_id``) with pending events, found by a skip scan
   of the partial index ``ix_customer_events_pending (consumer_id, next_attempt_at,
   created_at, sequence)``, an equal share of the batch: that tenant's oldest due pending
   events of the leased partitions that have no earlier pending event in their aggregate
   (the aggregate's head), in walk order (events written at the same instant come in
   sequence order, so heads come before the events behind them). The per-row check uses
   ``ix_customer_events_pending_aggregate`` (the walk index's predicate keeps the check
   off it: migration 20261202_1610). A head waiting out a backoff holds back its own
   aggregate only; a tenant's share never goes to another tenant's backlog unused.
2. ``AGGREGATE_RUNS``: when few aggregates have work, the next pending events of each
   head's aggregate that has more (``has_more``) in sequence order, so a busy customer is
   not published one event per round.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, text

from service.kit.prepared import PreparedStatement

BACKOFF_BASE_SECONDS = 1.0
FILL_MIN_FRACTION = 10  # a fill read only when at least 1/10 of the batch is unused

# What a publish needs of an event ``e`` and its tenant ``c`` (consumers): the message, its
# routing and its aggregate. The relay's reads and delivery's republish selection return it.
MESSAGE_COLUMNS = """
    e.event_id, e.customer_id, e.consumer_id, e.event_type, e.payload_json,
    e.metadata_json, e.created_at, e.publish_try_count, e.sequence, e.traceparent,
    coalesce(e.customer_id, e.consumer_id) AS aggregate_id, c.name AS consumer_name
"""
# The relay's reads add the event's partition (which lease covers it).
EVENT_COLUMNS = (
    MESSAGE_COLUMNS.rstrip()
    + """,
    fintegrate_aggregate_partition(e.consumer_id, e.customer_id, :partition_count)
        AS partition_no
"""
)

# Sent with the due-heads read, this transaction only (see due_heads). ``jit = off``: the
# disabled plan types add a huge cost to the one sort left (the tenants' turn order, a
# handful of rows), which would cross jit_above_cost: compiling would take far longer than
# the query. The reads are PREPAREd (``service.kit.prepared``): planning DUE_HEADS cost
# 1.8 ms a round, running it 0.2 ms. ``plan_cache_mode``: always the one generic plan,
# planned under these hints, never a custom plan per round (tests hold its shape).
PLANNER_HINTS = text(
    "SET LOCAL enable_sort = off; SET LOCAL enable_seqscan = off;"
    " SET LOCAL enable_material = off; SET LOCAL jit = off;"
    " SET LOCAL plan_cache_mode = force_generic_plan"
)

# One tenant's due heads in walk order (next_attempt_at, created_at, sequence): the
# pending events of its leased partitions with no earlier pending event in their aggregate.
TENANT_WALK = f"""
    SELECT {EVENT_COLUMNS},
        EXISTS (
            SELECT 1 FROM customer_events n
            WHERE n.publish_status = 'pending'
              AND coalesce(n.customer_id, n.consumer_id) = coalesce(e.customer_id, e.consumer_id)
              AND n.sequence > e.sequence) AS has_more
    FROM customer_events e
    LEFT JOIN consumers c ON c.consumer_id = e.consumer_id
    WHERE e.consumer_id = t.consumer_id
      AND e.publish_status = 'pending' AND e.next_attempt_at <= now()
      AND fintegrate_aggregate_partition(e.consumer_id, e.customer_id, :partition_count)
          = ANY(CAST(:partitions AS integer[]))
      AND NOT EXISTS (
          SELECT 1 FROM customer_events b
          WHERE b.publish_status = 'pending'
            AND coalesce(b.customer_id, b.consumer_id) = coalesce(e.customer_id, e.consumer_id)
            AND b.sequence < e.sequence)
    ORDER BY e.next_attempt_at, e.created_at, e.sequence
"""  # noqa: S608 - constant column list

# The tenants with pending events (a skip scan of the walk index: one probe per tenant),
# less the held ones, rotated to start after :after, at most :limit of them; each walks up
# to an equal share of :limit heads.
DUE_HEADS = text(
    "WITH RECURSIVE tenants(consumer_id) AS ("  # noqa: S608 - constant fragments
    """
        (SELECT consumer_id FROM customer_events
         WHERE publish_status = 'pending' AND next_attempt_at IS NOT NULL
         ORDER BY consumer_id LIMIT 1)
        UNION ALL
        SELECT (SELECT e.consumer_id FROM customer_events e
                WHERE e.publish_status = 'pending' AND e.next_attempt_at IS NOT NULL
                  AND e.consumer_id > tenants.consumer_id
                ORDER BY e.consumer_id LIMIT 1)
        FROM tenants WHERE tenants.consumer_id IS NOT NULL
    ),
    eligible AS (
        -- Only tenants with an event due now in the leased partitions: a tenant whose
        -- pending events all wait for a retry (or sit in another relay's partitions) must
        -- not take a turn, or a round of such turns reads nothing and the rotation stalls.
        -- One probe per tenant that stops at its first due event: as an EXISTS the planner
        -- made it a semi-join that read and hashed every due event of every tenant each
        -- round, and without the ORDER BY it picks a bitmap scan of the tenant's whole
        -- backlog (an unordered Append of partitions takes each one's cheapest total path).
        SELECT t.consumer_id FROM tenants t
        CROSS JOIN LATERAL (
            SELECT 1 FROM customer_events d
            WHERE d.consumer_id = t.consumer_id
              AND d.publish_status = 'pending' AND d.next_attempt_at <= now()
              AND fintegrate_aggregate_partition(d.consumer_id, d.customer_id, :partition_count)
                  = ANY(CAST(:partitions AS integer[]))
            ORDER BY d.next_attempt_at LIMIT 1) AS due
        WHERE t.consumer_id IS NOT NULL
          AND t.consumer_id <> ALL(CAST(:held AS uuid[]))
        ORDER BY consumer_id <= CAST(:after AS uuid), consumer_id
        LIMIT :limit
    ),
    quotas AS (
        SELECT e.consumer_id,
               (SELECT k.heads
                FROM unnest(CAST(:known AS uuid[]), CAST(:known_heads AS integer[]))
                    AS k(consumer_id, heads)
                WHERE k.consumer_id = e.consumer_id) AS known
        FROM eligible e
    ),
    share AS (
        SELECT CAST(ceil(
                   greatest(CAST(:limit AS float8) - coalesce(sum(known), 0),
                            count(*) FILTER (WHERE known IS NULL))
                   / greatest(count(*) FILTER (WHERE known IS NULL), 1)) AS integer) AS heads
        FROM quotas
    )
    SELECT heads.*, coalesce(t.known, share.heads) AS tenant_share
    FROM quotas t CROSS JOIN share
    CROSS JOIN LATERAL ("""
    + TENANT_WALK
    + """ LIMIT coalesce(t.known, share.heads)) AS heads
    """
)

# The hints and the read in one round trip (psycopg2 returns the last statement's rows).
PREPARED_DUE_HEADS = PreparedStatement(
    "fintegrate_due_heads",
    DUE_HEADS,
    (
        ("partition_count", "integer"),
        ("partitions", "integer[]"),
        ("held", "uuid[]"),
        ("after", "uuid"),
        ("limit", "integer"),
        ("known", "uuid[]"),
        ("known_heads", "integer[]"),
    ),
    before=PLANNER_HINTS.text,
)

# More heads of the given tenants (those that filled their share while others had less).
TENANT_HEADS = text(
    "SELECT heads.*, t.heads AS tenant_share"  # noqa: S608 - constant fragments
    """
    FROM unnest(CAST(:tenants AS uuid[]), CAST(:limits AS integer[])) AS t(consumer_id, heads)
    CROSS JOIN LATERAL ("""
    + TENANT_WALK
    + """ LIMIT t.heads) AS heads
    """
)
PREPARED_TENANT_HEADS = PreparedStatement(
    "fintegrate_tenant_heads",
    TENANT_HEADS,
    (
        ("tenants", "uuid[]"),
        ("limits", "integer[]"),
        ("partition_count", "integer"),
        ("partitions", "integer[]"),
    ),
)

AGGREGATE_RUNS = text(
    f"SELECT runs.* FROM unnest(CAST(:aggregates AS uuid[])) AS a(aggregate_id)"  # noqa: S608
    f" CROSS JOIN LATERAL (SELECT {EVENT_COLUMNS}"
    """
        FROM customer_events e
        LEFT JOIN consumers c ON c.consumer_id = e.consumer_id
        WHERE e.publish_status = 'pending'
          AND coalesce(e.customer_id, e.consumer_id) = a.aggregate_id
        ORDER BY e.sequence
        LIMIT :depth) AS runs
    """
)
PREPARED_AGGREGATE_RUNS = PreparedStatement(
    "fintegrate_aggregate_runs",
    AGGREGATE_RUNS,
    (("aggregates", "uuid[]"), ("depth", "integer"), ("partition_count", "integer")),
)

MARK_PUBLISHED = text(
    """
    UPDATE customer_events
    SET publish_status = 'published', published_at = now(),
        publish_try_count = publish_try_count + 1
    WHERE event_id = ANY(CAST(:event_ids AS uuid[]))
      AND created_at = ANY(CAST(:created_ats AS timestamptz[]))
    """
)

MARK_FAILED = text(
    """
    UPDATE customer_events AS e
    SET publish_try_count = e.publish_try_count + 1,
        publish_failure_reason = f.reason,
        next_attempt_at = now() + make_interval(
            secs => LEAST(CAST(:max_backoff AS float8),
                          CAST(:base AS float8) * power(2, LEAST(e.publish_try_count, 30))))
    FROM unnest(CAST(:event_ids AS uuid[]), CAST(:reasons AS text[])) AS f(event_id, reason)
    WHERE e.event_id = f.event_id AND e.publish_status = 'pending'
      AND e.created_at = ANY(CAST(:created_ats AS timestamptz[]))
    """
)

# One row per (event, publisher, reason), counted: a healthy round writes nothing here.
RECORD_FAILURES = text(
    """
    INSERT INTO event_publish_failures (event_id, relay_id, reason)
    SELECT f.event_id, :publisher, f.reason
    FROM unnest(CAST(:event_ids AS uuid[]), CAST(:reasons AS text[])) AS f(event_id, reason)
    ON CONFLICT ON CONSTRAINT event_publish_failures_event_relay_reason
    DO UPDATE SET attempts = event_publish_failures.attempts + 1, last_failed_at = now()
    """
)
PUBLISH_FAILURES = text(
    """
    SELECT f.relay_id, f.reason, f.attempts, f.first_failed_at, f.last_failed_at,
           m.hostname, m.pid
    FROM event_publish_failures f
    LEFT JOIN relay_members m ON m.relay_id::text = f.relay_id
    WHERE f.event_id = CAST(:event_id AS uuid)
    ORDER BY f.first_failed_at
    """
)

PLAIN_INDEX_SCAN = text("SET LOCAL enable_bitmapscan = off; SET LOCAL enable_seqscan = off")
PENDING_SUMMARY = text(
    """
    SELECT count(*) AS pending, min(created_at) AS oldest_created_at
    FROM customer_events WHERE publish_status = 'pending'
    """
)
# The oldest creation time among the first :limit pending events in due order: the walk of
# ix_customer_events_pending stops there, so its cost is bounded whatever the backlog.
OLDEST_PENDING_AGE = text(
    """
    SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
    FROM (SELECT created_at FROM customer_events WHERE publish_status = 'pending'
          ORDER BY next_attempt_at, created_at, sequence LIMIT :limit) AS due
    """
)
OLDEST_PENDING_WALK = 10_000


def due_heads(
    connection: Connection,
    partitions: Sequence[int],
    partition_count: int,
    limit: int,
    held: Sequence[str] = (),
    after: str | None = None,
    known: dict[str, int] | None = None,
) -> list[Row[Any]]:
    """Up to about ``limit`` due aggregate heads of ``partitions``, shared fairly by tenant.

    Every tenant with pending events (but those in ``held``) gets a share of ``limit``,
    its oldest due heads first: a tenant in ``known`` (one that had fewer heads than its
    share last round) gets the quota given there, the others split the rest equally. The
    share a tenant leaves unused anyway goes to those that filled theirs (``_fill``).
    When more than ``limit`` tenants have work, the ``limit`` tenants after ``after`` (the
    last one served, in ``consumer_id`` order, wrapping) get one head each.

    The planner hints (this transaction only) keep it on the ordered walk of the partial
    index and on index probes per head when statistics are stale after a sudden backlog,
    above all on a fresh weekly partition that ANALYZE has not seen: otherwise it may sort
    every pending row, or scan or materialise a partition for each head's probe. They do
    not help when the pending indexes were counted empty: every plan then looks free, and
    the relay refreshes those statistics instead (``relay.BacklogStatistics``).
    """
    params = {
        "partitions": list(partitions),
        "partition_count": partition_count,
        "limit": limit,
        "held": list(held),
        "after": after,
        "known": list(known or {}),
        "known_heads": list((known or {}).values()),
    }
    heads = PREPARED_DUE_HEADS.execute(connection, params).all()
    return _fill(connection, heads, params)


def _fill(
    connection: Connection, heads: Sequence[Row[Any]], params: dict[str, Any]
) -> list[Row[Any]]:
    """Hand the share that tenants with few due heads left unused to those that filled theirs.

    One more read, only in a round where at least a tenth of the batch was left unused
    while some tenant had more: a lone tenant, or tenants that all filled their share,
    never pay it.
    """
    spare = params["limit"] - len(heads)
    if not heads or spare < max(1, params["limit"] // FILL_MIN_FRACTION):
        return list(heads)
    by_tenant: dict[Any, list[Row[Any]]] = {}
    for row in heads:
        by_tenant.setdefault(row.consumer_id, []).append(row)
    full = [t for t, rows in by_tenant.items() if len(rows) >= rows[0].tenant_share]
    if not full:
        return list(heads)
    extra = max(1, spare // len(full))
    limits = [by_tenant[t][0].tenant_share + extra for t in full]
    fill = {**params, "tenants": [str(t) for t in full], "limits": limits}
    refilled: dict[Any, list[Row[Any]]] = {}
    for row in PREPARED_TENANT_HEADS.execute(connection, fill):
        refilled.setdefault(row.consumer_id, []).append(row)
    return [row for tenant in by_tenant for row in refilled.get(tenant, by_tenant[tenant])]


def aggregate_runs(
    connection: Connection, heads: Sequence[Row[Any]], partition_count: int, depth: int
) -> list[list[Row[Any]]]:
    """Each head's aggregate: its first ``depth`` pending events in sequence order.

    Only heads whose aggregate has more pending events (``has_more``) cost a read: on a
    steady trickle, where each head is alone, there is none.
    """
    deeper = [head for head in heads if head.has_more] if depth > 1 else []
    if not deeper:
        return [[head] for head in heads]
    params = {
        "aggregates": [head.aggregate_id for head in deeper],
        "partition_count": partition_count,
        "depth": depth,
    }
    runs: dict[str, list[Row[Any]]] = {str(head.aggregate_id): [head] for head in heads}
    for row in PREPARED_AGGREGATE_RUNS.execute(connection, params):
        key = str(row.aggregate_id)
        if row.sequence > runs[key][-1].sequence:
            runs[key].append(row)
    return list(runs.values())


def read_everything_due(
    heads: Sequence[Row[Any]], runs: Sequence[Sequence[Row[Any]]], depth: int
) -> bool:
    """True when a round's read returned every due event of the tenants it read.

    False when a tenant filled its share of heads (it may have more), or a run stopped at
    ``depth`` with more pending events behind it: the relay then reads again at once
    instead of waiting for a notification.
    """
    per_tenant = Counter(head.consumer_id for head in heads)
    shares = {head.consumer_id: head.tenant_share for head in heads}
    if any(count >= shares[tenant] for tenant, count in per_tenant.items()):
        return False
    return not any(run[0].has_more and (depth <= 1 or len(run) >= depth) for run in runs)


def mark_published(connection: Connection, rows: Sequence[Row[Any]]) -> None:
    """Record a confirmed publish of ``rows``: status, timestamp and one more try."""
    if rows:
        connection.execute(MARK_PUBLISHED, row_keys(rows))


def mark_failed(
    connection: Connection, failures: Sequence[tuple[Row[Any], str]], max_backoff_seconds: float
) -> None:
    """Record failed attempts ``(row, reason)``; retry after capped exponential backoff."""
    if not failures:
        return
    connection.execute(
        MARK_FAILED,
        {
            **row_keys([row for row, _ in failures]),
            "reasons": [reason[:1000] for _, reason in failures],
            "max_backoff": max_backoff_seconds,
            "base": BACKOFF_BASE_SECONDS,
        },
    )


def record_failures(
    connection: Connection, failures: Sequence[tuple[Row[Any], str]], publisher: str
) -> None:
    """Count the failed attempts by ``publisher`` (a relay id, or the API's resend)."""
    if failures:
        reasons = [reason[:1000] for _, reason in failures]
        ids = [str(row.event_id) for row, _ in failures]
        connection.execute(
            RECORD_FAILURES, {"event_ids": ids, "reasons": reasons, "publisher": publisher}
        )


def publish_failures(connection: Connection, event_id: Any) -> Sequence[Row[Any]]:
    """The event's failed attempts per publisher and reason, first failure first."""
    return connection.execute(PUBLISH_FAILURES, {"event_id": event_id}).all()


def row_keys(rows: Sequence[Row[Any]]) -> dict[str, list[Any]]:
    """The rows' ids, and their creation times so the update touches only their partitions.

    psycopg2 sends the arrays as literals, so the planner prunes ``created_at = ANY(...)``
    to the partitions holding those times (a round's events are usually all in the newest
    one) instead of probing every partition's primary key for every id: at 10,000,000
    events over 9 partitions that halved the marking update. ``event_id`` alone still
    picks the rows (it is unique); the times only narrow where to look.
    """
    return {
        "event_ids": [str(row.event_id) for row in rows],
        "created_ats": sorted({row.created_at for row in rows}),
    }


def transaction_time(connection: Connection) -> datetime:
    """PostgreSQL's ``now()``: when this transaction began, on the server's clock."""
    return connection.execute(text("SELECT now()")).scalar_one()


def pending_summary(connection: Connection) -> Row[Any]:
    """The outbox backlog: pending count and oldest pending creation time.

    Read by a plain scan of the pending partial indexes (this transaction only): a bitmap
    scan, which the planner picks when statistics still count a drained backlog, visits
    the heap page of every dead entry each time (8 ms for 12,000 entries over 10,000 pages
    at 10M events of history), where an index scan marks them dead on its first pass.
    """
    connection.execute(PLAIN_INDEX_SCAN)
    return connection.execute(PENDING_SUMMARY).one()


def oldest_pending_age(connection: Connection, walk: int = OLDEST_PENDING_WALK) -> float:
    """Seconds since the oldest pending event was created (0: none pending).

    Exact while at most ``walk`` events are pending; beyond that, the oldest of the
    ``walk`` earliest due (an event backing off far behind them may be older).
    """
    connection.execute(PLAIN_INDEX_SCAN)
    age: float = connection.execute(OLDEST_PENDING_AGE, {"limit": walk}).scalar_one()
    return age
