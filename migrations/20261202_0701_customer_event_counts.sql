-- Maintained event counts, so `fintegrate events stats` reads a few rows instead of
-- scanning customer_events (docs/events.md "History").
--
-- customer_event_counts holds signed deltas per (consumer, type, publish status, deliver
-- status): statement triggers on customer_events append one row per group a statement
-- touched (+n for inserted rows, -n/+n for a status change), so writers never contend on
-- a shared counter row. fintegrate_compact_event_counts() folds the deltas into one row per
-- group; the stats query sums whatever is there. Archiving a partition appends the negative
-- of its counts in the transaction that drops it. Writes that name a partition directly
-- (maintenance moving DEFAULT rows) do not fire these parent-level triggers, as they should.
--
-- Rollback (manual; the counts are derived data, nothing to archive):
--   DROP TRIGGER IF EXISTS trg_customer_events_count_insert ON customer_events;
--   DROP TRIGGER IF EXISTS trg_customer_events_count_update ON customer_events;
--   DROP FUNCTION IF EXISTS fintegrate_customer_events_count_insert();
--   DROP FUNCTION IF EXISTS fintegrate_customer_events_count_update();
--   DROP FUNCTION IF EXISTS fintegrate_compact_event_counts();
--   DROP TABLE IF EXISTS customer_event_counts;
BEGIN;

CREATE TABLE IF NOT EXISTS customer_event_counts (
    event_count_id  UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    consumer_id     UUID NOT NULL,
    event_type      TEXT NOT NULL,
    publish_status  TEXT NOT NULL,
    deliver_status  TEXT NOT NULL,
    events          BIGINT NOT NULL
);
-- `events stats --consumer NAME` (EVENT_COUNTS in service/events/stats.py).
CREATE INDEX IF NOT EXISTS ix_customer_event_counts_consumer
    ON customer_event_counts (consumer_id);

CREATE OR REPLACE FUNCTION fintegrate_customer_events_count_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO customer_event_counts
        (consumer_id, event_type, publish_status, deliver_status, events)
    SELECT consumer_id, event_type, publish_status, deliver_status, count(*)
    FROM new_rows GROUP BY 1, 2, 3, 4;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION fintegrate_customer_events_count_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO customer_event_counts
        (consumer_id, event_type, publish_status, deliver_status, events)
    SELECT consumer_id, event_type, publish_status, deliver_status, sum(delta)
    FROM (SELECT consumer_id, event_type, publish_status, deliver_status, -1 AS delta
          FROM old_rows
          UNION ALL
          SELECT consumer_id, event_type, publish_status, deliver_status, 1 FROM new_rows) d
    GROUP BY 1, 2, 3, 4
    HAVING sum(delta) <> 0;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION fintegrate_compact_event_counts() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    folded integer;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('fintegrate_compact_event_counts'));
    WITH gone AS (DELETE FROM customer_event_counts RETURNING *),
    kept AS (
        INSERT INTO customer_event_counts
            (consumer_id, event_type, publish_status, deliver_status, events)
        SELECT consumer_id, event_type, publish_status, deliver_status, sum(events)
        FROM gone GROUP BY 1, 2, 3, 4 HAVING sum(events) <> 0
        RETURNING 1)
    SELECT (SELECT count(*) FROM gone) - (SELECT count(*) FROM kept) INTO folded;
    RETURN folded;
END;
$$;

DROP TRIGGER IF EXISTS trg_customer_events_count_insert ON customer_events;
CREATE TRIGGER trg_customer_events_count_insert AFTER INSERT ON customer_events
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION fintegrate_customer_events_count_insert();
DROP TRIGGER IF EXISTS trg_customer_events_count_update ON customer_events;
CREATE TRIGGER trg_customer_events_count_update AFTER UPDATE ON customer_events
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION fintegrate_customer_events_count_update();

-- Seed from the rows already there, once (an empty count table and a non-empty outbox).
INSERT INTO customer_event_counts (consumer_id, event_type, publish_status, deliver_status, events)
SELECT consumer_id, event_type, publish_status, deliver_status, count(*)
FROM customer_events
WHERE NOT EXISTS (SELECT 1 FROM customer_event_counts)
GROUP BY 1, 2, 3, 4;

COMMIT;
