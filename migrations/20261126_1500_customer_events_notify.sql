-- Wake the outbox relay: every statement that inserts customer_events rows sends one
-- NOTIFY on channel fintegrate_customer_events (delivered at commit, coalesced per
-- transaction). The relay LISTENs and falls back to polling, so a lost notification only
-- delays publishing by FINTEGRATE_RELAY_POLL_SECONDS.
-- Rollback (manual; nothing to archive, no data changes):
--   DROP TRIGGER IF EXISTS trg_customer_events_notify ON customer_events;
--   DROP FUNCTION IF EXISTS fintegrate_customer_events_notify();
BEGIN;

CREATE OR REPLACE FUNCTION fintegrate_customer_events_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('fintegrate_customer_events', '');
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS trg_customer_events_notify ON customer_events;
CREATE TRIGGER trg_customer_events_notify AFTER INSERT ON customer_events
    FOR EACH STATEMENT EXECUTE FUNCTION fintegrate_customer_events_notify();

COMMIT;
