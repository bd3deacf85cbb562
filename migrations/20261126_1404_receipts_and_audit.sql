-- Delivery receipts (the idempotency record) and the audit log.
-- Rollback (manual; archive first):
--   CREATE TABLE consumer_event_receipts_archive AS TABLE consumer_event_receipts;
--   CREATE TABLE audit_log_archive AS TABLE audit_log;
--   DROP TABLE IF EXISTS consumer_event_receipts; DROP TABLE IF EXISTS audit_log;
BEGIN;

CREATE TABLE IF NOT EXISTS consumer_event_receipts (
    receipt_id   UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    event_id     UUID NOT NULL,
    consumer_id  UUID NOT NULL,
    status       TEXT NOT NULL,
    detail       TEXT,
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT consumer_event_receipts_status_check
        CHECK (status IN ('received', 'processed', 'failed')),
    CONSTRAINT consumer_event_receipts_unique UNIQUE (event_id, consumer_id, status)
);
CREATE INDEX IF NOT EXISTS ix_consumer_event_receipts_event_id ON consumer_event_receipts (event_id);
CREATE INDEX IF NOT EXISTS ix_consumer_event_receipts_consumer_id
    ON consumer_event_receipts (consumer_id);
CREATE INDEX IF NOT EXISTS ix_consumer_event_receipts_received_at
    ON consumer_event_receipts (received_at);

CREATE TABLE IF NOT EXISTS audit_log (
    audit_id     UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    occurred_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor        TEXT NOT NULL,
    action       TEXT NOT NULL,
    request_id   TEXT,
    consumer_id  UUID,
    method       TEXT,
    path         TEXT,
    status_code  INTEGER,
    detail_json  JSONB NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS ix_audit_log_occurred_at ON audit_log (occurred_at);
CREATE INDEX IF NOT EXISTS ix_audit_log_request_id ON audit_log (request_id);
CREATE INDEX IF NOT EXISTS ix_audit_log_consumer_id ON audit_log (consumer_id);

COMMIT;
