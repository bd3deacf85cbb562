-- customer_events becomes range-partitioned by created_at (docs/events.md "History").
--
-- Conversion without moving a row: the existing table is renamed customer_events_legacy,
-- a partitioned customer_events is created LIKE it (every column, default, CHECK and NOT
-- NULL carried generically, whatever earlier migrations added), and the legacy table is
-- ATTACHed as one partition covering everything up to the end of the current span. Its
-- rows stay where they are (no copy, no second disk footprint); it is archived and dropped
-- as a whole once all of it is older than the cut-off. An empty legacy table is dropped.
-- A DEFAULT partition catches any row whose range has no partition yet (maintenance not
-- run), so an insert never fails; fintegrate_ensure_event_partitions() moves such rows into
-- their proper partition when it creates it.
--
-- Indexes: the primary key must contain the partition key, so it is (event_id, created_at);
-- event_id still leads, and every lookup by event_id alone uses it. Each index kept names
-- the query it serves (see the CREATE INDEX comments below); the others are dropped:
--   ix_customer_events_created_at    - no query filters on created_at alone (partition
--                                      pruning and the per-tenant index cover ranges);
--   ix_customer_events_published_at  - no query reads published_at as a filter;
--   ix_customer_events_delivered_at  - no query reads delivered_at as a filter;
--   ix_customer_events_customer_id   - replaced by (customer_id, created_at, event_id).
-- Indexes other migrations added that are not listed here are carried over unchanged
-- (recreated on the partitioned table from their definition):
--   ix_customer_events_pending_aggregate (20261202_0500) - the relay's per-aggregate head
--     check and runs (outbox.py DUE_HEADS NOT EXISTS, AGGREGATE_RUNS) and the ordered
--     republish selection; pending rows only.
-- Triggers are carried the same way (the sequence trigger of 20261202_0500 included).
--
-- Rollback (manual; archive first - the rows live in the partitions):
--   CREATE TABLE customer_events_flat (LIKE customer_events INCLUDING ALL EXCLUDING INDEXES);
--   INSERT INTO customer_events_flat SELECT * FROM customer_events;
--   ALTER TABLE customer_events RENAME TO customer_events_partitioned;
--   ALTER TABLE customer_events_flat RENAME TO customer_events;
--   then recreate the primary key (event_id), the indexes and triggers of
--   20261126_1403 / 20261126_1500, and drop customer_events_partitioned after checking counts;
--   DROP FUNCTION IF EXISTS fintegrate_ensure_event_partitions(integer, integer);
--   DROP FUNCTION IF EXISTS fintegrate_event_partition_upper(regclass);
--   DROP FUNCTION IF EXISTS fintegrate_create_event_partition(timestamptz, timestamptz);
BEGIN;

-- The upper bound of a range partition of customer_events (NULL for the DEFAULT one).
CREATE OR REPLACE FUNCTION fintegrate_event_partition_upper(part regclass) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT substring(pg_get_expr(c.relpartbound, c.oid) FROM $r$TO \('([^']+)'\)$r$)::timestamptz
    FROM pg_class c WHERE c.oid = part
$$;

-- One partition [range_start, range_end): storage settings of the outbox, the TRUNCATE
-- guard (statement triggers are not inherited), and the rows of that range that landed in
-- the DEFAULT partition moved in (the DEFAULT is detached for the move, which drops its
-- cloned append-only trigger, and attached again; only ever rows maintenance was late for).
CREATE OR REPLACE FUNCTION fintegrate_create_event_partition(
    range_start timestamptz, range_end timestamptz) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    part text := 'customer_events_p' || to_char(range_start AT TIME ZONE 'UTC', 'YYYYMMDD');
    stray boolean;
BEGIN
    IF to_regclass(part) IS NOT NULL THEN
        part := part || to_char(range_start AT TIME ZONE 'UTC', '"_"HH24MI');
    END IF;
    SELECT EXISTS (SELECT 1 FROM customer_events_default
                   WHERE created_at >= range_start AND created_at < range_end) INTO stray;
    IF stray THEN
        ALTER TABLE customer_events DETACH PARTITION customer_events_default;
    END IF;
    EXECUTE format(
        'CREATE TABLE %I PARTITION OF customer_events FOR VALUES FROM (%L) TO (%L)
         WITH (fillfactor = 90, autovacuum_vacuum_scale_factor = 0.01,
               autovacuum_analyze_scale_factor = 0.02)', part, range_start, range_end);
    EXECUTE format(
        'CREATE TRIGGER trg_customer_events_no_truncate BEFORE TRUNCATE ON %I
         FOR EACH STATEMENT EXECUTE FUNCTION fintegrate_customer_events_no_truncate()', part);
    IF stray THEN
        -- a move, not a write: no row trigger may renumber or touch the rows (the sequence
        -- trigger of 20261202_0500 would assign new numbers)
        EXECUTE format('ALTER TABLE %I DISABLE TRIGGER USER', part);
        EXECUTE format('INSERT INTO %I SELECT * FROM customer_events_default
                        WHERE created_at >= %L AND created_at < %L', part, range_start, range_end);
        EXECUTE format('ALTER TABLE %I ENABLE TRIGGER USER', part);
        DELETE FROM customer_events_default
        WHERE created_at >= range_start AND created_at < range_end;
        ALTER TABLE customer_events ATTACH PARTITION customer_events_default DEFAULT;
    END IF;
    RETURN part;
END;
$$;

-- Partitions from the end of the newest one (or the current span) through `ahead` spans
-- past the current one; spans are aligned to Monday 2000-01-03 UTC. Returns how many it
-- created. Called by this migration, at API/relay start and by the relay's maintenance.
CREATE OR REPLACE FUNCTION fintegrate_ensure_event_partitions(
    span_days integer DEFAULT 7, ahead integer DEFAULT 2) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    span interval;
    origin constant timestamptz := '2000-01-03 00:00:00+00';
    horizon timestamptz;
    at timestamptz;
    next_at timestamptz;
    created integer := 0;
BEGIN
    IF span_days IS NULL OR span_days < 1 OR ahead IS NULL OR ahead < 0 THEN
        RAISE EXCEPTION 'partition span must be >= 1 day and ahead >= 0 (got %, %)',
            span_days, ahead;
    END IF;
    span := make_interval(days => span_days);
    -- one creator at a time (the relays and the API may start together)
    PERFORM pg_advisory_xact_lock(hashtext('fintegrate_ensure_event_partitions'));
    horizon := date_bin(span, now(), origin) + span * (ahead + 1);
    SELECT greatest(date_bin(span, now(), origin),
                    max(fintegrate_event_partition_upper(i.inhrelid::regclass)))
    INTO at
    FROM pg_inherits i WHERE i.inhparent = 'customer_events'::regclass;
    at := coalesce(at, date_bin(span, now(), origin));
    WHILE at < horizon LOOP
        next_at := date_bin(span, at, origin) + span;
        PERFORM fintegrate_create_event_partition(at, next_at);
        created := created + 1;
        at := next_at;
    END LOOP;
    RETURN created;
END;
$$;

DO $$
DECLARE
    legacy_rows boolean;
    upper_at timestamptz;
    item record;
    carried text[] := ARRAY[]::text[];
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = 'customer_events'::regclass) = 'p' THEN
        RETURN;  -- already partitioned
    END IF;
    LOCK TABLE customer_events IN ACCESS EXCLUSIVE MODE;
    ALTER TABLE customer_events RENAME TO customer_events_legacy;

    -- Triggers move to the partitioned table (row triggers are then cloned back onto every
    -- partition, the legacy one included); carried generically from their definitions.
    FOR item IN SELECT t.tgname, pg_get_triggerdef(t.oid) AS def FROM pg_trigger t
                WHERE t.tgrelid = 'customer_events_legacy'::regclass AND NOT t.tgisinternal
    LOOP
        carried := carried || regexp_replace(item.def, ' ON (\S+\.)?customer_events_legacy ',
                                             ' ON customer_events ');
        EXECUTE format('DROP TRIGGER %I ON customer_events_legacy', item.tgname);
    END LOOP;
    -- Indexes: the ones this migration does not redefine are carried the same way.
    FOR item IN SELECT c.relname, pg_get_indexdef(c.oid) AS def, x.indisprimary
                FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
                WHERE x.indrelid = 'customer_events_legacy'::regclass
    LOOP
        IF item.indisprimary THEN
            ALTER TABLE customer_events_legacy DROP CONSTRAINT customer_events_pkey;
            CONTINUE;
        END IF;
        IF item.relname NOT IN ('ix_customer_events_pending', 'ix_customer_events_undelivered',
                                'ix_customer_events_consumer_created',
                                'ix_customer_events_customer_id', 'ix_customer_events_created_at',
                                'ix_customer_events_published_at',
                                'ix_customer_events_delivered_at') THEN
            carried := carried || regexp_replace(item.def, ' ON (\S+\.)?customer_events_legacy ',
                                                 ' ON customer_events ');
        END IF;
        EXECUTE format('DROP INDEX %I', item.relname);
    END LOOP;

    CREATE TABLE customer_events (LIKE customer_events_legacy INCLUDING ALL EXCLUDING INDEXES)
        PARTITION BY RANGE (created_at);
    -- GET /events/{id} (SELECT_EVENT), POST /events/confirm-delivery (CONFIRM_DELIVERY):
    -- event_id leads, one probe per partition.
    ALTER TABLE customer_events ADD CONSTRAINT customer_events_pkey
        PRIMARY KEY (event_id, created_at);
    -- The relay's due heads (service/messaging/outbox.py DUE_HEADS, ordered walk by
    -- next_attempt_at), `events resend` (KIND_CONDITION resend), outbox PENDING_SUMMARY:
    -- only pending rows, so it stays as small as the backlog.
    CREATE INDEX ix_customer_events_pending
        ON customer_events (next_attempt_at, created_at) WHERE publish_status = 'pending';
    -- `events redeliver` and its dry-run (KIND_CONDITION redeliver), GET /events
    -- ?deliver_status=pending|failed: published but not delivered rows only.
    CREATE INDEX ix_customer_events_undelivered
        ON customer_events (consumer_id, created_at)
        WHERE publish_status = 'published' AND deliver_status <> 'delivered';
    -- GET /events (LIST_EVENTS): a tenant's events in (created_at, event_id) order, the
    -- keyset cursor; also ?since= and the unfiltered first page.
    CREATE INDEX ix_customer_events_consumer_created
        ON customer_events (consumer_id, created_at, event_id);
    -- GET /events?customer_id= (LIST_EVENTS, same order) and the customer's erasure
    -- (REDACT_EVENT_PAYLOADS in service/customers/repository.py).
    CREATE INDEX ix_customer_events_customer_created
        ON customer_events (customer_id, created_at, event_id);
    FOR i IN 1 .. coalesce(array_length(carried, 1), 0) LOOP
        EXECUTE carried[i];
    END LOOP;

    CREATE TABLE customer_events_default PARTITION OF customer_events DEFAULT;
    CREATE TRIGGER trg_customer_events_no_truncate BEFORE TRUNCATE ON customer_events_default
        FOR EACH STATEMENT EXECUTE FUNCTION fintegrate_customer_events_no_truncate();

    SELECT EXISTS (SELECT 1 FROM customer_events_legacy) INTO legacy_rows;
    IF NOT legacy_rows THEN
        DROP TABLE customer_events_legacy;  -- empty: nothing to keep
        RETURN;
    END IF;
    SELECT date_bin('7 days', greatest(now(), max(created_at)), '2000-01-03 00:00:00+00')
           + interval '7 days'
    INTO upper_at FROM customer_events_legacy;
    EXECUTE format('ALTER TABLE customer_events ATTACH PARTITION customer_events_legacy
                    FOR VALUES FROM (MINVALUE) TO (%L)', upper_at);
    CREATE TRIGGER trg_customer_events_no_truncate BEFORE TRUNCATE ON customer_events_legacy
        FOR EACH STATEMENT EXECUTE FUNCTION fintegrate_customer_events_no_truncate();
END;
$$;

SELECT fintegrate_ensure_event_partitions(7, 2);

-- The indexes this file dropped, should anything have created them again.
DROP INDEX IF EXISTS ix_customer_events_created_at;
DROP INDEX IF EXISTS ix_customer_events_published_at;
DROP INDEX IF EXISTS ix_customer_events_delivered_at;
DROP INDEX IF EXISTS ix_customer_events_customer_id;

COMMIT;
