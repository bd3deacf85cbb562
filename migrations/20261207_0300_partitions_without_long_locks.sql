-- History maintenance that never queues the platform (docs/events.md "History", issue 24).
--
-- * fintegrate_create_event_partition(range_start, range_end) no longer detaches the
--   DEFAULT partition (an ACCESS EXCLUSIVE lock on customer_events for the whole move).
--   The partition is built beside the table - CREATE TABLE ... LIKE customer_events
--   INCLUDING ALL (its indexes exist before it is attached, so ATTACH builds none) with a
--   CHECK constraint equal to its range (so ATTACH does not scan it) - the rows of that
--   range that wait in DEFAULT are copied in and deleted from DEFAULT, then it is ATTACHed
--   (SHARE UPDATE EXCLUSIVE on customer_events: reads and writes go on; ACCESS EXCLUSIVE
--   on the DEFAULT partition only for its validation scan). One transaction, so a moved
--   row is visible in exactly one place at every moment. The caller sets lock_timeout.
-- * The append-only trigger lets exactly that move delete rows, and only from the DEFAULT
--   partition: the moving transaction sets fintegrate.moving_default_rows = 'on' (SET LOCAL).
--
-- Rollback (manual): rerun the function bodies of 20261202_0700 (create partition) and
-- 20261202_0710 (append-only); nothing else changes.
BEGIN;

CREATE OR REPLACE FUNCTION fintegrate_create_event_partition(
    range_start timestamptz, range_end timestamptz) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    part text := 'customer_events_p' || to_char(range_start AT TIME ZONE 'UTC', 'YYYYMMDD');
BEGIN
    IF to_regclass(part) IS NOT NULL THEN
        part := part || to_char(range_start AT TIME ZONE 'UTC', '"_"HH24MI');
    END IF;
    EXECUTE format(
        'CREATE TABLE %I (LIKE customer_events INCLUDING ALL)
         WITH (fillfactor = 90, autovacuum_vacuum_scale_factor = 0.01,
               autovacuum_analyze_scale_factor = 0.02)', part);
    EXECUTE format(
        'ALTER TABLE %I ADD CONSTRAINT %I CHECK (created_at IS NOT NULL
             AND created_at >= %L AND created_at < %L)',
        part, part || '_range', range_start, range_end);
    IF EXISTS (SELECT 1 FROM customer_events_default
               WHERE created_at >= range_start AND created_at < range_end) THEN
        -- a move, not a write: the new table has no row triggers yet, so nothing renumbers
        EXECUTE format('INSERT INTO %I SELECT * FROM customer_events_default
                        WHERE created_at >= %L AND created_at < %L', part, range_start, range_end);
        PERFORM set_config('fintegrate.moving_default_rows', 'on', true);
        DELETE FROM customer_events_default
        WHERE created_at >= range_start AND created_at < range_end;
        PERFORM set_config('fintegrate.moving_default_rows', 'off', true);
    END IF;
    EXECUTE format('ALTER TABLE customer_events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                   part, range_start, range_end);
    EXECUTE format(
        'CREATE TRIGGER trg_customer_events_no_truncate BEFORE TRUNCATE ON %I
         FOR EACH STATEMENT EXECUTE FUNCTION fintegrate_customer_events_no_truncate()', part);
    RETURN part;
END;
$$;

CREATE OR REPLACE FUNCTION fintegrate_customer_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    bookkeeping constant text[] := ARRAY[
        'publish_status', 'publish_try_count', 'publish_failure_reason', 'published_at',
        'next_attempt_at', 'deliver_status', 'deliver_try_count', 'delivered_at',
        'payload_json'];
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF TG_TABLE_NAME = 'customer_events_default'
           AND current_setting('fintegrate.moving_default_rows', true) = 'on' THEN
            RETURN OLD;  -- moved into the partition of its range (fintegrate_create_event_partition)
        END IF;
        RAISE EXCEPTION 'customer_events is append-only: DELETE is not allowed'
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF (to_jsonb(NEW) - bookkeeping) IS DISTINCT FROM (to_jsonb(OLD) - bookkeeping) THEN
        RAISE EXCEPTION 'customer_events is append-only: only publish/deliver bookkeeping may change'
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF NEW.payload_json IS DISTINCT FROM OLD.payload_json
       AND NEW.payload_json IS DISTINCT FROM fintegrate_erased_payload() THEN
        RAISE EXCEPTION 'customer_events is append-only: a payload may only be erased'
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END;
$$;

COMMIT;
