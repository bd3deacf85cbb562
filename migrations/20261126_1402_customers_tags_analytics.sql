-- Customers (tenant-owned, soft-deleted), their key-value tags and analytics snapshots.
-- No foreign keys on base tables; consumer_id is repeated on child rows for tenant filtering.
-- Rollback (manual; archive first):
--   CREATE TABLE customer_analytics_archive AS TABLE customer_analytics;  -- likewise tags, customers
--   DROP TABLE IF EXISTS customer_analytics; DROP TABLE IF EXISTS customer_tags;
--   DROP TABLE IF EXISTS customers;
BEGIN;

CREATE TABLE IF NOT EXISTS customers (
    customer_id  UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    consumer_id  UUID NOT NULL,
    name         TEXT NOT NULL,
    email        TEXT,
    status       TEXT NOT NULL DEFAULT 'active',
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at   TIMESTAMPTZ,
    CONSTRAINT customers_status_check CHECK (status IN ('active', 'inactive', 'suspended')),
    CONSTRAINT customers_name_length CHECK (char_length(name) BETWEEN 1 AND 200),
    CONSTRAINT customers_email_length CHECK (email IS NULL OR char_length(email) <= 320)
);
CREATE INDEX IF NOT EXISTS ix_customers_consumer_created
    ON customers (consumer_id, created_at, customer_id);
CREATE INDEX IF NOT EXISTS ix_customers_consumer_id ON customers (consumer_id);
CREATE INDEX IF NOT EXISTS ix_customers_created_at ON customers (created_at);
CREATE INDEX IF NOT EXISTS ix_customers_deleted_at ON customers (deleted_at);

DROP TRIGGER IF EXISTS trg_customers_updated_at ON customers;
CREATE TRIGGER trg_customers_updated_at BEFORE UPDATE ON customers
    FOR EACH ROW EXECUTE FUNCTION fintegrate_set_updated_at();

CREATE TABLE IF NOT EXISTS customer_tags (
    tag_id       UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id  UUID NOT NULL,
    consumer_id  UUID NOT NULL,
    tag_key      TEXT NOT NULL,
    tag_value    JSONB NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT customer_tags_customer_key UNIQUE (customer_id, tag_key),
    CONSTRAINT customer_tags_key_length CHECK (char_length(tag_key) BETWEEN 1 AND 100)
);
CREATE INDEX IF NOT EXISTS ix_customer_tags_customer_id ON customer_tags (customer_id);
CREATE INDEX IF NOT EXISTS ix_customer_tags_consumer_id ON customer_tags (consumer_id);

DROP TRIGGER IF EXISTS trg_customer_tags_updated_at ON customer_tags;
CREATE TRIGGER trg_customer_tags_updated_at BEFORE UPDATE ON customer_tags
    FOR EACH ROW EXECUTE FUNCTION fintegrate_set_updated_at();

CREATE TABLE IF NOT EXISTS customer_analytics (
    analytics_id  UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id   UUID NOT NULL,
    consumer_id   UUID NOT NULL,
    metrics_json  JSONB NOT NULL DEFAULT '{}'::jsonb,
    recorded_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ix_customer_analytics_customer_recorded
    ON customer_analytics (customer_id, recorded_at);
CREATE INDEX IF NOT EXISTS ix_customer_analytics_consumer_id ON customer_analytics (consumer_id);
CREATE INDEX IF NOT EXISTS ix_customer_analytics_created_at ON customer_analytics (created_at);

COMMIT;
