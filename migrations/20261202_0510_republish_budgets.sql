-- A tenant's allowance for bulk republishing (POST /events/resend and /events/redeliver):
-- a token bucket per consumer, refilled at FINTEGRATE_REPUBLISH_TENANT_PER_MINUTE events a
-- minute up to one minute's worth. The row is locked for the duration of a republish
-- call, so a tenant's concurrent calls share one budget on every API instance.
-- Rollback (manual; only the allowance is lost):
--   DROP TABLE IF EXISTS republish_budgets;
BEGIN;

CREATE TABLE IF NOT EXISTS republish_budgets (
    republish_budget_id uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    consumer_id         uuid        NOT NULL,
    tokens              float8      NOT NULL,
    refilled_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT republish_budgets_consumer UNIQUE (consumer_id)
);

COMMIT;
