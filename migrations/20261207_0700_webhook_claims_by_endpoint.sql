-- Claim webhook deliveries endpoint by endpoint, in time proportional to what is claimed.
--
-- The claim ranked every due pending delivery of every endpoint (a window over the whole
-- backlog) to find each endpoint's first heads, so each claim cost grew with the backlog.
-- It now walks each open endpoint's due heads on this index, stopping at the endpoint's
-- free room, and counts the endpoint's deliveries in flight on the second one (it holds
-- only claimed pending rows: a few per endpoint).
--
-- ix_webhook_deliveries_due stays: `events stats` and the archive's final check read
-- pending rows by time.
--
-- Rollback (manual): DROP INDEX ix_webhook_deliveries_endpoint_due,
-- ix_webhook_deliveries_claimed.
BEGIN;

CREATE INDEX IF NOT EXISTS ix_webhook_deliveries_endpoint_due
    ON webhook_deliveries (endpoint_id, next_attempt_at, sequence) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS ix_webhook_deliveries_claimed
    ON webhook_deliveries (endpoint_id, claimed_until)
    WHERE status = 'pending' AND claimed_until IS NOT NULL;

COMMIT;
