-- Keep the anti-join probe of DUE_HEADS off the walk index.
--
-- 20261202_1600 added `sequence` to ix_customer_events_pending. The probe of DUE_HEADS
-- ("is there an earlier pending event of this aggregate?": coalesce(customer_id,
-- consumer_id) = … AND sequence < …) could then use that index too, with `sequence < …`
-- as a condition on its last key, which means reading every pending entry of the
-- partition per probe. The planner chose it right after a backlog landed in a partition
-- ANALYZE had seen without pending rows: on a table with 10,000,000 events of history the
-- relay read 412,000 index entries for 200 heads (369 ms a round, 156 events/s instead of
-- 2,600). The probe belongs on ix_customer_events_pending_aggregate (coalesce(...),
-- sequence), which finds the aggregate's pending events directly.
--
-- `next_attempt_at IS NOT NULL` is true of every row (the column is NOT NULL), but a
-- partial index serves only queries whose conditions imply its predicate: the walk's
-- `next_attempt_at <= now()` does (a strict comparison implies NOT NULL), the probe states
-- nothing about next_attempt_at, so the planner cannot pick this index for it.
-- tests/service/messaging/publish/test_relay.py holds both plans.
--
-- Rollback (manual): re-run 20261202_1600_pending_walk_by_sequence.sql.
BEGIN;

DROP INDEX IF EXISTS ix_customer_events_pending;
CREATE INDEX ix_customer_events_pending
    ON customer_events (next_attempt_at, created_at, sequence)
    WHERE publish_status = 'pending' AND next_attempt_at IS NOT NULL;

COMMIT;
