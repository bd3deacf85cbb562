"""The benchmarks' own SQL: backlogs written straight into the outbox, and the baselines.

Being outside the tables' owners is the point here (docs/ARCHITECTURE.md, "Tables and
their owners"): a backlog of 50,000 events is one ``INSERT ... SELECT``, and the
baselines are the relay's earlier algorithms kept only to be measured against.
"""

from __future__ import annotations

from sqlalchemy import text

from service.events import outbox

NEW_CONSUMER = text("INSERT INTO consumers (name) VALUES (:name) RETURNING consumer_id")
# ``count`` pending events of one tenant over ``customers`` customers, interleaved as
# concurrent customers write them.
BACKLOG = text(
    """
    INSERT INTO customer_events (customer_id, consumer_id, event_type, source_service,
                                 payload_json, metadata_json)
    SELECT md5(:salt || (n % :customers)::text)::uuid, :consumer_id, 'customer_creation',
           'POST /customer/data',
           jsonb_build_object('name', 'Customer ' || n, 'email', 'c' || n || '@example.com',
                              'status', 'active'),
           jsonb_build_object('request_id', md5(n::text))
    FROM generate_series(1, :count) AS n
    """
)
ANALYZE = text("ANALYZE customer_events")
VACUUM_ANALYZE = text("VACUUM ANALYZE customer_events")
RESET = text(
    """
    UPDATE customer_events SET publish_status = 'pending', published_at = NULL,
        publish_try_count = 0, next_attempt_at = created_at
    """
)
# After the drain rounds: the backlog counts as published whichever side ran last (raw
# pika marks nothing), so the latency run's relay starts with nothing to catch up on.
SETTLE_BACKLOG = text(
    """
    UPDATE customer_events SET publish_status = 'published', published_at = now(),
        publish_try_count = 1
    WHERE publish_status = 'pending'
    """
)
PENDING = text("SELECT count(*) FROM customer_events WHERE publish_status = 'pending'")
PENDING_OF = text(
    "SELECT count(*) FROM customer_events WHERE consumer_id = :c AND publish_status = 'pending'"
)
PENDING_ROWS = text(
    """
    SELECT e.*, c.name AS consumer_name FROM customer_events e
    JOIN consumers c ON c.consumer_id = e.consumer_id WHERE e.publish_status = 'pending'
    """
)
BODIES = text(
    """
    SELECT e.payload_json::text AS payload FROM customer_events e
    WHERE e.consumer_id = :consumer_id ORDER BY e.created_at, e.sequence
    """
)

# The relay before per-aggregate ordering (the drain baseline): no order at all.
UNORDERED_CLAIM = text(
    """
    SELECT e.event_id, e.customer_id, e.consumer_id, e.event_type, e.payload_json,
           e.metadata_json, e.created_at, e.publish_try_count, e.sequence,
           c.name AS consumer_name
    FROM customer_events e LEFT JOIN consumers c ON c.consumer_id = e.consumer_id
    WHERE e.publish_status = 'pending' AND e.next_attempt_at <= now()
    ORDER BY e.next_attempt_at, e.created_at
    LIMIT :limit
    FOR UPDATE OF e SKIP LOCKED
    """
)
UNORDERED_MARK = text(
    """
    UPDATE customer_events
    SET publish_status = 'published', published_at = now(),
        publish_try_count = publish_try_count + 1
    WHERE event_id = ANY(CAST(:event_ids AS uuid[]))
    """
)
NO_SORT = text("SET LOCAL enable_sort = off")

# The selection before per-tenant fairness (oldest due head first across all tenants) and
# the index it walked: the fairness run's baseline.
PREVIOUS_WALK_INDEX = text(
    """
    CREATE INDEX IF NOT EXISTS ix_bench_previous_walk
        ON customer_events (next_attempt_at, created_at, sequence)
        WHERE publish_status = 'pending' AND next_attempt_at IS NOT NULL
    """
)
DROP_PREVIOUS_WALK_INDEX = text("DROP INDEX IF EXISTS ix_bench_previous_walk")
PREVIOUS_DUE_HEADS = text(
    f"SELECT {outbox.EVENT_COLUMNS}"  # noqa: S608 - constant column list
    # what the relay reads off the per-tenant selection's rows: runs are always read and
    # one share is the whole batch
    """, true AS has_more, CAST(:limit AS integer) AS tenant_share
    FROM customer_events e
    LEFT JOIN consumers c ON c.consumer_id = e.consumer_id
    WHERE e.publish_status = 'pending' AND e.next_attempt_at <= now()
      AND fintegrate_aggregate_partition(e.consumer_id, e.customer_id, :partition_count)
          = ANY(CAST(:partitions AS integer[]))
      AND NOT EXISTS (
          SELECT 1 FROM customer_events b
          WHERE b.publish_status = 'pending'
            AND coalesce(b.customer_id, b.consumer_id) = coalesce(e.customer_id, e.consumer_id)
            AND b.sequence < e.sequence)
    ORDER BY e.next_attempt_at, e.created_at, e.sequence
    LIMIT :limit
    """
)

QUIET_EVENT = text(
    """
    INSERT INTO customer_events (customer_id, consumer_id, event_type, source_service,
                                 payload_json, metadata_json)
    VALUES (gen_random_uuid(), :consumer_id, 'customer_creation', 'bench', '{}', '{}')
    RETURNING event_id
    """
)
# p50/p99 of published_at - created_at (commit to confirmed publish), in ms.
PUBLISH_LAG_OF_EVENTS = text(
    """
    SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lag) AS p50,
           percentile_cont(0.99) WITHIN GROUP (ORDER BY lag) AS p99, count(*) AS n
    FROM (SELECT extract(epoch FROM published_at - created_at) * 1000 AS lag
          FROM customer_events
          WHERE event_id = ANY(CAST(:event_ids AS uuid[])) AND published_at IS NOT NULL) AS t
    """
)
PUBLISH_LAG_OF_CUSTOMERS = text(
    """
    SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lag) AS p50,
           percentile_cont(0.99) WITHIN GROUP (ORDER BY lag) AS p99, count(*) AS n
    FROM (SELECT extract(epoch FROM published_at - created_at) * 1000 AS lag
          FROM customer_events
          WHERE customer_id = ANY(CAST(:customer_ids AS uuid[])) AND published_at IS NOT NULL
          ) AS t
    """
)
