-- Per-aggregate event sequence (SPEC 5, ordering). An aggregate is a customer (its consumer
-- and customer_id) or, for consumer-level events (customer_id NULL), the consumer itself;
-- its key is coalesce(customer_id, consumer_id), unique because both are random UUIDs.
-- A BEFORE INSERT trigger takes the next number from event_sequences with
-- INSERT ... ON CONFLICT DO UPDATE: the counter row stays locked until the writing
-- transaction ends, so two writers of one aggregate get n and n+1 (never both n), in commit
-- order, and a rolled-back write leaves no gap. Every writer of customer_events gets it,
-- whatever path it takes; a value supplied by the writer is ignored.
-- Existing rows are numbered by (created_at, event_id) within their aggregate.
-- Indexes (each named by the query that needs it):
--   ix_customer_events_pending_aggregate: the relay's per-aggregate head lookup
--     (service/messaging/outbox.py AGGREGATE_PENDING, BLOCKED_BY_BACKOFF) and the ordered
--     republish selection (service/delivery/repository.py).
-- Rollback (manual; archive first, the numbers cannot be recomputed after new writes):
--   CREATE TABLE event_sequences_archive AS TABLE event_sequences;
--   DROP TRIGGER IF EXISTS trg_customer_events_sequence ON customer_events;
--   DROP FUNCTION IF EXISTS fintegrate_customer_events_sequence();
--   DROP INDEX IF EXISTS ix_customer_events_pending_aggregate;
--   (keep the column: customer_events is append-only)
BEGIN;

CREATE TABLE IF NOT EXISTS event_sequences (
    event_sequence_id uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    consumer_id       uuid        NOT NULL,
    aggregate_id      uuid        NOT NULL,
    last_sequence     bigint      NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT event_sequences_aggregate UNIQUE (aggregate_id, consumer_id),
    CONSTRAINT event_sequences_positive CHECK (last_sequence >= 1)
);
ALTER TABLE event_sequences SET (fillfactor = 70);
-- Operators' per-tenant look-ups (and SPEC 3: every UUID reference column is indexed).
CREATE INDEX IF NOT EXISTS ix_event_sequences_consumer_id ON event_sequences (consumer_id);

ALTER TABLE customer_events ADD COLUMN IF NOT EXISTS sequence bigint;

-- Number the rows written before this migration (the append-only trigger allows it: the
-- column is bookkeeping until it has a value; see the function below).
WITH numbered AS (
    SELECT event_id,
           row_number() OVER (PARTITION BY consumer_id, coalesce(customer_id, consumer_id)
                              ORDER BY created_at, event_id) AS n
    FROM customer_events
)
UPDATE customer_events e SET sequence = numbered.n
FROM numbered WHERE e.event_id = numbered.event_id AND e.sequence IS NULL;

INSERT INTO event_sequences (consumer_id, aggregate_id, last_sequence)
SELECT consumer_id, coalesce(customer_id, consumer_id), max(sequence)
FROM customer_events GROUP BY consumer_id, coalesce(customer_id, consumer_id)
ON CONFLICT (aggregate_id, consumer_id)
    DO UPDATE SET last_sequence = GREATEST(event_sequences.last_sequence, EXCLUDED.last_sequence);

ALTER TABLE customer_events ALTER COLUMN sequence SET NOT NULL;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'customer_events_sequence_positive')
    THEN
        ALTER TABLE customer_events
            ADD CONSTRAINT customer_events_sequence_positive CHECK (sequence >= 1);
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION fintegrate_customer_events_sequence() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO event_sequences AS s (consumer_id, aggregate_id, last_sequence)
    VALUES (NEW.consumer_id, coalesce(NEW.customer_id, NEW.consumer_id), 1)
    ON CONFLICT (aggregate_id, consumer_id)
        DO UPDATE SET last_sequence = s.last_sequence + 1, updated_at = now()
    RETURNING last_sequence INTO NEW.sequence;
    RETURN NEW;
END;
$$;

DROP TRIGGER IF EXISTS trg_customer_events_sequence ON customer_events;
CREATE TRIGGER trg_customer_events_sequence BEFORE INSERT ON customer_events
    FOR EACH ROW EXECUTE FUNCTION fintegrate_customer_events_sequence();

-- The sequence is part of the event's identity once assigned.
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
       OR NEW.created_at IS DISTINCT FROM OLD.created_at
       OR (OLD.sequence IS NOT NULL AND NEW.sequence IS DISTINCT FROM OLD.sequence) THEN
        RAISE EXCEPTION 'customer_events is append-only: only publish/deliver bookkeeping may change'
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END;
$$;

CREATE INDEX IF NOT EXISTS ix_customer_events_pending_aggregate
    ON customer_events (coalesce(customer_id, consumer_id), sequence)
    INCLUDE (next_attempt_at)
    WHERE publish_status = 'pending';

COMMIT;
