-- The last delivered sequence per aggregate, outside the event partitions (issue 23).
-- GET/POST /events/last-delivered, the worker's stale and gap checks and DLQ replay read it
-- here instead of from customer_events, so the answer survives archiving (dropping a
-- partition drops its delivered events, not the fact that they were delivered).
-- One row per (consumer, aggregate); the aggregate is coalesce(customer_id, consumer_id) as
-- in event_sequences. POST /events/confirm-delivery raises it in the same statement that
-- records a received/processed receipt (service/events/repository.py CONFIRM_DELIVERY), so
-- it never lags the receipts. Backfilled from the events already delivered.
-- Rollback (manual; the readers fall back to nothing, so deploy the previous code first):
--   DROP TABLE IF EXISTS delivered_sequences;
BEGIN;

CREATE TABLE IF NOT EXISTS delivered_sequences (
    delivered_sequence_id uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    consumer_id           uuid        NOT NULL,
    aggregate_id          uuid        NOT NULL,
    sequence              bigint      NOT NULL,
    event_id              uuid        NOT NULL,
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT delivered_sequences_aggregate UNIQUE (aggregate_id, consumer_id),
    CONSTRAINT delivered_sequences_positive CHECK (sequence >= 1)
);
ALTER TABLE delivered_sequences SET (fillfactor = 70);
-- The batched look-up (POST /events/last-delivered) finds rows by the unique key; these
-- two serve operators' per-tenant and per-event questions (SPEC 3: every UUID reference
-- column leads an index).
CREATE INDEX IF NOT EXISTS ix_delivered_sequences_consumer_id
    ON delivered_sequences (consumer_id);
CREATE INDEX IF NOT EXISTS ix_delivered_sequences_event_id
    ON delivered_sequences (event_id);

INSERT INTO delivered_sequences (consumer_id, aggregate_id, sequence, event_id, updated_at)
SELECT DISTINCT ON (consumer_id, coalesce(customer_id, consumer_id))
       consumer_id, coalesce(customer_id, consumer_id), sequence, event_id,
       coalesce(delivered_at, now())
FROM customer_events
WHERE deliver_status = 'delivered'
ORDER BY consumer_id, coalesce(customer_id, consumer_id), sequence DESC
ON CONFLICT ON CONSTRAINT delivered_sequences_aggregate DO UPDATE
    SET sequence = EXCLUDED.sequence, event_id = EXCLUDED.event_id
    WHERE delivered_sequences.sequence < EXCLUDED.sequence;

COMMIT;
