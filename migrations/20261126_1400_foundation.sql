-- Foundation: migration history and the shared updated_at trigger function.
-- Rollback (manual, only on an empty database):
--   DROP FUNCTION IF EXISTS fintegrate_set_updated_at() CASCADE;
--   DROP TABLE IF EXISTS migration_history;
BEGIN;

CREATE TABLE IF NOT EXISTS migration_history (
    version       TEXT PRIMARY KEY,
    filename      TEXT NOT NULL UNIQUE,
    checksum      TEXT NOT NULL CHECK (checksum ~ '^[0-9a-f]{64}$'),
    applied_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    execution_ms  INTEGER NOT NULL CHECK (execution_ms >= 0),
    applied_by    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_migration_history_applied_at ON migration_history (applied_at);

CREATE OR REPLACE FUNCTION fintegrate_set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

COMMIT;
