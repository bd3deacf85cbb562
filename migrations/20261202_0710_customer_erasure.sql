-- Per-customer erasure (POST /customer/data/{customer_id}/erase, `fintegrate customers erase`).
--
-- * customer_events accepts the event type customer_erasure;
-- * the append-only rule allows exactly one content change: a payload replaced by the
--   erasure marker {"erased": true}. Every other column that is not publish/deliver
--   bookkeeping stays immutable; the check is written over the whole row (minus the
--   bookkeeping columns), so columns added later are protected without editing it;
-- * customers.erased_at records when (and that) a customer was erased.
--
-- Rollback (manual; erased data cannot come back - restore from an archive if needed):
--   re-run the function body of 20261126_1403 (CREATE OR REPLACE FUNCTION
--   fintegrate_customer_events_append_only ...), restore the CHECK without
--   'customer_erasure' once no such event is left, and
--   ALTER TABLE customers DROP COLUMN IF EXISTS erased_at;
BEGIN;

ALTER TABLE customers ADD COLUMN IF NOT EXISTS erased_at TIMESTAMPTZ;

ALTER TABLE customer_events DROP CONSTRAINT IF EXISTS customer_events_type_check;
ALTER TABLE customer_events ADD CONSTRAINT customer_events_type_check CHECK (event_type IN (
    'customer_creation', 'customer_deletion', 'customer_status_change', 'consumer_created',
    'customer_erasure'));

CREATE OR REPLACE FUNCTION fintegrate_erased_payload() RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$ SELECT '{"erased": true}'::jsonb $$;

CREATE OR REPLACE FUNCTION fintegrate_customer_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    bookkeeping constant text[] := ARRAY[
        'publish_status', 'publish_try_count', 'publish_failure_reason', 'published_at',
        'next_attempt_at', 'deliver_status', 'deliver_try_count', 'delivered_at',
        'payload_json'];
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'customer_events is append-only: DELETE is not allowed'
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF (to_jsonb(NEW) - bookkeeping) IS DISTINCT FROM (to_jsonb(OLD) - bookkeeping) THEN
        RAISE EXCEPTION 'customer_events is append-only: only publish/deliver bookkeeping may change'
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF NEW.payload_json IS DISTINCT FROM OLD.payload_json
       AND NEW.payload_json IS DISTINCT FROM fintegrate_erased_payload() THEN
        RAISE EXCEPTION 'customer_events is append-only: a payload may only be erased'
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END;
$$;

COMMIT;
