-- Tenants (consumers) and their API keys.
-- Keys are fk_<prefix>_<secret>: key_prefix is the clear lookup id, key_hash the bcrypt hash
-- of the whole key. At most one active key per consumer (partial unique index).
-- Rollback (manual; archive first):
--   CREATE TABLE consumer_api_keys_archive AS TABLE consumer_api_keys;
--   CREATE TABLE consumers_archive AS TABLE consumers;
--   DROP TABLE IF EXISTS consumer_api_keys; DROP TABLE IF EXISTS consumers;
BEGIN;

CREATE TABLE IF NOT EXISTS consumers (
    consumer_id            UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name                   TEXT NOT NULL,
    description            TEXT,
    status                 TEXT NOT NULL DEFAULT 'active',
    metadata_json          JSONB NOT NULL DEFAULT '{}'::jsonb,
    rate_limit_per_minute  INTEGER,
    rate_limit_burst       INTEGER,
    created_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT consumers_name_key UNIQUE (name),
    CONSTRAINT consumers_name_pattern CHECK (name ~ '^[a-z0-9_]+$' AND char_length(name) <= 64),
    CONSTRAINT consumers_status_check CHECK (status IN ('active', 'disabled')),
    CONSTRAINT consumers_rate_limit_check
        CHECK ((rate_limit_per_minute IS NULL OR rate_limit_per_minute > 0)
           AND (rate_limit_burst IS NULL OR rate_limit_burst > 0))
);
CREATE INDEX IF NOT EXISTS ix_consumers_created_at ON consumers (created_at);

DROP TRIGGER IF EXISTS trg_consumers_updated_at ON consumers;
CREATE TRIGGER trg_consumers_updated_at BEFORE UPDATE ON consumers
    FOR EACH ROW EXECUTE FUNCTION fintegrate_set_updated_at();

CREATE TABLE IF NOT EXISTS consumer_api_keys (
    key_id        UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    consumer_id   UUID NOT NULL,
    key_prefix    TEXT NOT NULL,
    key_hash      TEXT NOT NULL,
    is_active     BOOLEAN NOT NULL DEFAULT true,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at  TIMESTAMPTZ,
    revoked_at    TIMESTAMPTZ,
    expires_at    TIMESTAMPTZ,
    CONSTRAINT consumer_api_keys_prefix_key UNIQUE (key_prefix),
    CONSTRAINT consumer_api_keys_revoked_inactive CHECK (revoked_at IS NULL OR NOT is_active)
);
CREATE UNIQUE INDEX IF NOT EXISTS ux_consumer_api_keys_one_active
    ON consumer_api_keys (consumer_id) WHERE is_active;
CREATE INDEX IF NOT EXISTS ix_consumer_api_keys_consumer_id ON consumer_api_keys (consumer_id);
CREATE INDEX IF NOT EXISTS ix_consumer_api_keys_created_at ON consumer_api_keys (created_at);

COMMIT;
