-- Failed publish attempts, by relay and reason, for `fintegrate events trace` (SPEC 9).
--
-- customer_events keeps only the last failure reason and the try count. This table says
-- which relay (or API resend/redeliver) failed to publish an event and why: one row per
-- (event, relay, reason) with its attempt count and first/last times, so an event that
-- fails for hours on end stays one row per relay and reason. Written in the relay's
-- record transaction, only when an attempt failed: a healthy relay writes nothing here.
-- Rows outlive the event's partition when it is archived (nothing joins them back).
--
-- Rollback (manual):
--   DROP TABLE IF EXISTS event_publish_failures;
BEGIN;

CREATE TABLE IF NOT EXISTS event_publish_failures (
    event_publish_failure_id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    event_id UUID NOT NULL,
    relay_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1 CHECK (attempts >= 1),
    first_failed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_failed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT event_publish_failures_event_relay_reason UNIQUE (event_id, relay_id, reason)
);

COMMENT ON TABLE event_publish_failures IS
    'Failed publish attempts per event, relay and reason (fintegrate events trace)';

COMMIT;
