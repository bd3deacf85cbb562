-- The worker's stale-duplicate check (GET /events/last-delivered, service/events/repository.py
-- LAST_DELIVERED_OF_CONSUMER): the highest delivered sequence of a consumer-level aggregate
-- (customer_id NULL). Without it that look-up walks every event of the tenant; a customer's
-- aggregate already has ix_customer_events_customer_id. Consumer-level events are few, so
-- the partial index stays tiny and costs the hot customer writes nothing.
-- Rollback (manual): DROP INDEX IF EXISTS ix_customer_events_consumer_level;
BEGIN;

CREATE INDEX IF NOT EXISTS ix_customer_events_consumer_level
    ON customer_events (consumer_id, sequence)
    WHERE customer_id IS NULL;

COMMIT;
