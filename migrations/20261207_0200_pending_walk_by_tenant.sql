-- Lead the relay's pending walk with the tenant, so each round serves every tenant.
--
-- The relay used to walk ix_customer_events_pending (next_attempt_at, created_at,
-- sequence) oldest-first across all tenants: one tenant's bulk import held every other
-- tenant's new events until it had drained. It now finds the tenants with pending events
-- by a skip scan of this index (one probe per tenant) and walks each tenant's due heads
-- in the old order, up to a fair share of the batch (service/events/outbox.py DUE_HEADS).
-- The index replaces the old one rather than adding to it: every index on the outbox is
-- paid by every insert, and nothing else walked the old order.
--
-- The predicate is unchanged (see 20261202_1610: it keeps the head probe off this index).
--
-- Rollback (manual): re-run 20261202_1610_pending_walk_only_for_the_walk.sql.
BEGIN;

DROP INDEX IF EXISTS ix_customer_events_pending;
CREATE INDEX ix_customer_events_pending
    ON customer_events (consumer_id, next_attempt_at, created_at, sequence)
    WHERE publish_status = 'pending' AND next_attempt_at IS NOT NULL;

COMMIT;
