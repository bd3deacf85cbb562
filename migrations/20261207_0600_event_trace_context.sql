-- The trace context of the request that wrote an event (SPEC 9, docs/observability.md).
--
-- customer_events.traceparent holds the W3C traceparent of the API request span, written
-- in the same INSERT as the event (NULL when tracing is off). The relay continues it in
-- the AMQP header of the same name, so one trace runs from the API call to the receipt.
-- A nullable column without a default: no table rewrite, on every partition at once.
-- The append-only trigger keeps it immutable like every non-bookkeeping column.
--
-- Rollback (manual):
--   ALTER TABLE customer_events DROP COLUMN IF EXISTS traceparent;
BEGIN;

ALTER TABLE customer_events ADD COLUMN IF NOT EXISTS traceparent TEXT;

COMMENT ON COLUMN customer_events.traceparent IS
    'W3C traceparent of the request that wrote the event (NULL: tracing off)';

COMMIT;
