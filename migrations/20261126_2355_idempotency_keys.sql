-- Idempotency keys for POST /customer/data: a client that retries a create (after a
-- timeout, or a 503 whose commit may still have succeeded) with the same Idempotency-Key
-- gets the first answer back instead of a second customer. One row per tenant and key,
-- written in the same statement as the customer and its event; rows older than 24 hours
-- are ignored by the API and purged by later keyed creates (index on created_at).
-- Rollback (manual; only replay protection is lost):
--   DROP TABLE IF EXISTS idempotency_keys;
BEGIN;

CREATE TABLE IF NOT EXISTS idempotency_keys (
    idempotency_key_id  uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    consumer_id         uuid        NOT NULL,
    idempotency_key     text        NOT NULL,
    request_fingerprint text        NOT NULL,
    customer_id         uuid        NOT NULL,
    response_json       jsonb       NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT idempotency_keys_tenant_key UNIQUE (consumer_id, idempotency_key),
    CONSTRAINT idempotency_keys_key_length CHECK (length(idempotency_key) BETWEEN 1 AND 255)
);

CREATE INDEX IF NOT EXISTS ix_idempotency_keys_customer_id ON idempotency_keys (customer_id);
CREATE INDEX IF NOT EXISTS ix_idempotency_keys_created_at ON idempotency_keys (created_at);

COMMIT;
