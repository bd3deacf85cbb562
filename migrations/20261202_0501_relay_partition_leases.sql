-- Relay partitions and their leases (SPEC 5, ordering). Relays split the outbox by
-- fintegrate_aggregate_partition(consumer_id, customer_id, P): every event of one aggregate
-- falls in one partition, and each partition is published by at most one relay at a time.
-- relay_partitions holds one row per partition: its owner, a fencing token that grows on
-- every change of owner, and the lease's expiry (PostgreSQL's clock, never the relay's).
-- relay_members holds one row per running relay and its heartbeat; the live members split
-- the partitions evenly. partition_no (0 .. P-1) is the hash bucket; the primary keys are
-- UUIDs like every table's. No foreign keys (SPEC 3).
-- Rollback (manual; no business data, relays rebuild the rows at start):
--   DROP TABLE IF EXISTS relay_partitions; DROP TABLE IF EXISTS relay_members;
--   DROP FUNCTION IF EXISTS fintegrate_aggregate_partition(uuid, uuid, integer);
BEGIN;

CREATE OR REPLACE FUNCTION fintegrate_aggregate_partition(
    consumer_id uuid, customer_id uuid, partitions integer
) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (hashtext(coalesce(customer_id, consumer_id)::text) & 2147483647) % partitions
$$;

CREATE TABLE IF NOT EXISTS relay_partitions (
    relay_partition_id uuid       PRIMARY KEY DEFAULT gen_random_uuid(),
    partition_no      integer     NOT NULL,
    owner_id          uuid,
    fencing_token     bigint      NOT NULL DEFAULT 0,
    lease_expires_at  timestamptz,
    acquired_at       timestamptz,
    CONSTRAINT relay_partitions_no_unique UNIQUE (partition_no),
    CONSTRAINT relay_partitions_no_check CHECK (partition_no >= 0)
);
CREATE INDEX IF NOT EXISTS ix_relay_partitions_owner_id ON relay_partitions (owner_id);

CREATE TABLE IF NOT EXISTS relay_members (
    relay_id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    partition_count   integer     NOT NULL,
    hostname          text        NOT NULL,
    pid               integer     NOT NULL,
    started_at        timestamptz NOT NULL DEFAULT now(),
    heartbeat_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT relay_members_partition_count_check CHECK (partition_count >= 1)
);
CREATE INDEX IF NOT EXISTS ix_relay_members_heartbeat_at ON relay_members (heartbeat_at);

COMMIT;
