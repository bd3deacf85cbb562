-- customer_events: the append-only event table and transactional outbox.
-- Identity and content never change and rows are never deleted (trigger); only the
-- publish/deliver bookkeeping columns move. The relay claims pending rows through a partial
-- index so its cost does not grow with the number of published rows.
-- Rollback (manual; archive first):
--   CREATE TABLE customer_events_archive AS TABLE customer_events;
--   DROP TABLE IF EXISTS customer_events;
--   DROP FUNCTION IF EXISTS fintegrate_customer_events_append_only();
BEGIN;

CREATE TABLE IF NOT EXISTS customer_events (
    event_id                UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id             UUID,
    consumer_id             UUID NOT NULL,
    event_type              TEXT NOT NULL,
    source_service          TEXT NOT NULL,
    payload_json            JSONB NOT NULL DEFAULT '{}'::jsonb,
    metadata_json           JSONB NOT NULL DEFAULT '{}'::jsonb,
    publish_status          TEXT NOT NULL DEFAULT 'pending',
    publish_try_count       INTEGER NOT NULL DEFAULT 0,
    publish_failure_reason  TEXT,
    published_at            TIMESTAMPTZ,
    next_attempt_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    deliver_status          TEXT NOT NULL DEFAULT 'pending',
    deliver_try_count       INTEGER NOT NULL DEFAULT 0,
    delivered_at            TIMESTAMPTZ,
    created_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT customer_events_type_check CHECK (event_type IN (
        'customer_creation', 'customer_deletion', 'customer_status_change', 'consumer_created')),
    CONSTRAINT customer_events_publish_status_check
        CHECK (publish_status IN ('pending', 'published', 'failed')),
    CONSTRAINT customer_events_deliver_status_check
        CHECK (deliver_status IN ('pending', 'delivered', 'failed')),
    CONSTRAINT customer_events_counts_check
        CHECK (publish_try_count >= 0 AND deliver_try_count >= 0)
);
ALTER TABLE customer_events SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_analyze_scale_factor = 0.02,
    fillfactor = 90
);

CREATE INDEX IF NOT EXISTS ix_customer_events_pending
    ON customer_events (next_attempt_at, created_at) WHERE publish_status = 'pending';
CREATE INDEX IF NOT EXISTS ix_customer_events_undelivered
    ON customer_events (consumer_id, created_at)
    WHERE publish_status = 'published' AND deliver_status <> 'delivered';
CREATE INDEX IF NOT EXISTS ix_customer_events_consumer_created
    ON customer_events (consumer_id, created_at, event_id);
CREATE INDEX IF NOT EXISTS ix_customer_events_customer_id ON customer_events (customer_id);
CREATE INDEX IF NOT EXISTS ix_customer_events_created_at ON customer_events (created_at);
CREATE INDEX IF NOT EXISTS ix_customer_events_published_at ON customer_events (published_at);
CREATE INDEX IF NOT EXISTS ix_customer_events_delivered_at ON customer_events (delivered_at);

CREATE OR REPLACE FUNCTION fintegrate_customer_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'customer_events is append-only: DELETE is not allowed'
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF NEW.event_id IS DISTINCT FROM OLD.event_id
       OR NEW.customer_id IS DISTINCT FROM OLD.customer_id
       OR NEW.consumer_id IS DISTINCT FROM OLD.consumer_id
       OR NEW.event_type IS DISTINCT FROM OLD.event_type
       OR NEW.source_service IS DISTINCT FROM OLD.source_service
       OR NEW.payload_json IS DISTINCT FROM OLD.payload_json
       OR NEW.metadata_json IS DISTINCT FROM OLD.metadata_json
       OR NEW.created_at IS DISTINCT FROM OLD.created_at THEN
        RAISE EXCEPTION 'customer_events is append-only: only publish/deliver bookkeeping may change'
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END;
$$;

DROP TRIGGER IF EXISTS trg_customer_events_append_only ON customer_events;
CREATE TRIGGER trg_customer_events_append_only BEFORE UPDATE OR DELETE ON customer_events
    FOR EACH ROW EXECUTE FUNCTION fintegrate_customer_events_append_only();

CREATE OR REPLACE FUNCTION fintegrate_customer_events_no_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'customer_events is append-only: TRUNCATE is not allowed'
        USING ERRCODE = 'restrict_violation';
END;
$$;

DROP TRIGGER IF EXISTS trg_customer_events_no_truncate ON customer_events;
CREATE TRIGGER trg_customer_events_no_truncate BEFORE TRUNCATE ON customer_events
    FOR EACH STATEMENT EXECUTE FUNCTION fintegrate_customer_events_no_truncate();

COMMIT;
