-- Webhooks (SPEC 8): a tenant's HTTPS endpoints, their signing secrets, one delivery row per
-- (endpoint, event) and every attempt.
--
-- webhook_endpoints: the tenant's endpoints. event_types NULL means every type. The breaker
--   and auto-disable read consecutive_failures / failing_since / paused_until.
-- webhook_endpoint_secrets: the signing secrets, encrypted (AES-GCM, key from
--   FINTEGRATE_WEBHOOK_ENCRYPTION_KEY): a dump alone cannot sign. The current secret has
--   expires_at NULL; a rotated one keeps signing until its expires_at (the grace).
-- webhook_deliveries: one row per (endpoint, event), written by the statement trigger below
--   in the event's own transaction, so no event is ever missed by an enabled endpoint. A
--   pending row is sent only when no earlier pending row of its aggregate (customer, else
--   consumer) waits for the same endpoint; claimed_by (the process's id) / claim_token /
--   claimed_until are the
--   row's lease (a `webhooks deliver` process records an outcome only with its token).
-- webhook_attempts: every attempt (status, duration, first 4 KiB of the body, error, next
--   attempt), for `fintegrate webhooks attempts`.
-- No foreign keys (SPEC 3).
--
-- Rollback (manual; archive first):
--   DROP TRIGGER IF EXISTS trg_customer_events_webhook_fanout ON customer_events;
--   DROP FUNCTION IF EXISTS fintegrate_webhook_fanout();
--   CREATE TABLE webhook_attempts_archive AS TABLE webhook_attempts;  (and the other three)
--   DROP TABLE IF EXISTS webhook_attempts, webhook_deliveries, webhook_endpoint_secrets,
--       webhook_endpoints;
BEGIN;

CREATE TABLE IF NOT EXISTS webhook_endpoints (
    endpoint_id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    consumer_id           uuid        NOT NULL,
    url                   text        NOT NULL,
    description           text,
    event_types           text[],
    status                text        NOT NULL DEFAULT 'enabled',
    disabled_reason       text,
    consecutive_failures  integer     NOT NULL DEFAULT 0,
    failing_since         timestamptz,
    paused_until          timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    deleted_at            timestamptz,
    CONSTRAINT webhook_endpoints_status_check CHECK (status IN ('enabled', 'disabled'))
);
-- The tenant's listing and the fan-out trigger's look-up.
CREATE INDEX IF NOT EXISTS ix_webhook_endpoints_consumer_id
    ON webhook_endpoints (consumer_id, created_at) WHERE deleted_at IS NULL;
DROP TRIGGER IF EXISTS trg_webhook_endpoints_updated_at ON webhook_endpoints;
CREATE TRIGGER trg_webhook_endpoints_updated_at BEFORE UPDATE ON webhook_endpoints
    FOR EACH ROW EXECUTE FUNCTION fintegrate_set_updated_at();

CREATE TABLE IF NOT EXISTS webhook_endpoint_secrets (
    secret_id     uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    endpoint_id   uuid        NOT NULL,
    ciphertext    bytea       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz
);
CREATE INDEX IF NOT EXISTS ix_webhook_endpoint_secrets_endpoint_id
    ON webhook_endpoint_secrets (endpoint_id);
-- One current secret per endpoint.
CREATE UNIQUE INDEX IF NOT EXISTS ux_webhook_endpoint_secrets_current
    ON webhook_endpoint_secrets (endpoint_id) WHERE expires_at IS NULL;

CREATE TABLE IF NOT EXISTS webhook_deliveries (
    delivery_id       uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    endpoint_id       uuid        NOT NULL,
    consumer_id       uuid        NOT NULL,
    event_id          uuid        NOT NULL,
    event_created_at  timestamptz NOT NULL,
    aggregate_id      uuid        NOT NULL,
    sequence          bigint      NOT NULL,
    status            text        NOT NULL DEFAULT 'pending',
    attempt_count     integer     NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    claimed_by        text,
    claim_token       bigint      NOT NULL DEFAULT 0,
    claimed_until     timestamptz,
    last_error        text,
    delivered_at      timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT webhook_deliveries_status_check
        CHECK (status IN ('pending', 'delivered', 'failed', 'cancelled')),
    CONSTRAINT webhook_deliveries_endpoint_event UNIQUE (endpoint_id, event_id)
);
-- The delivery process's walk: due pending rows, oldest due first.
CREATE INDEX IF NOT EXISTS ix_webhook_deliveries_due
    ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
-- The head check: an earlier pending row of the same aggregate for the same endpoint.
CREATE INDEX IF NOT EXISTS ix_webhook_deliveries_pending_aggregate
    ON webhook_deliveries (aggregate_id, endpoint_id, sequence) WHERE status = 'pending';
-- The per-event views (`events show`).
CREATE INDEX IF NOT EXISTS ix_webhook_deliveries_event_id ON webhook_deliveries (event_id);
CREATE INDEX IF NOT EXISTS ix_webhook_deliveries_consumer_id
    ON webhook_deliveries (consumer_id, event_id);
-- `events stats`: the failed deliveries (pending ones come off ix_webhook_deliveries_due).
CREATE INDEX IF NOT EXISTS ix_webhook_deliveries_failed
    ON webhook_deliveries (consumer_id) WHERE status = 'failed';
-- Archive's "every channel final" check: pending rows by their event's time.
CREATE INDEX IF NOT EXISTS ix_webhook_deliveries_pending_created
    ON webhook_deliveries (event_created_at) WHERE status = 'pending';
-- recover's window.
CREATE INDEX IF NOT EXISTS ix_webhook_deliveries_endpoint_created
    ON webhook_deliveries (endpoint_id, event_created_at);
DROP TRIGGER IF EXISTS trg_webhook_deliveries_updated_at ON webhook_deliveries;
CREATE TRIGGER trg_webhook_deliveries_updated_at BEFORE UPDATE ON webhook_deliveries
    FOR EACH ROW EXECUTE FUNCTION fintegrate_set_updated_at();

CREATE TABLE IF NOT EXISTS webhook_attempts (
    attempt_id       uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    delivery_id      uuid        NOT NULL,
    endpoint_id      uuid        NOT NULL,
    event_id         uuid        NOT NULL,
    attempt_number   integer     NOT NULL,
    status           text        NOT NULL,
    started_at       timestamptz NOT NULL,
    duration_ms      integer     NOT NULL,
    response_status  integer,
    response_body    text,
    error            text,
    next_attempt_at  timestamptz,
    CONSTRAINT webhook_attempts_status_check
        CHECK (status IN ('succeeded', 'retrying', 'failed'))
);
-- `webhooks attempts ENDPOINT_ID` pages by (started_at, attempt_id).
CREATE INDEX IF NOT EXISTS ix_webhook_attempts_endpoint_started
    ON webhook_attempts (endpoint_id, started_at, attempt_id);
CREATE INDEX IF NOT EXISTS ix_webhook_attempts_event_id ON webhook_attempts (event_id);
CREATE INDEX IF NOT EXISTS ix_webhook_attempts_delivery_id ON webhook_attempts (delivery_id);

-- Fan-out: every inserted event gets one pending delivery per enabled endpoint of its tenant
-- whose filter admits its type, in the event's transaction. Writes that name a partition
-- directly (maintenance moving rows) do not fire parent-level statement triggers: a move is
-- not a new event.
CREATE OR REPLACE FUNCTION fintegrate_webhook_fanout() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_deliveries
        (endpoint_id, consumer_id, event_id, event_created_at, aggregate_id, sequence)
    SELECT w.endpoint_id, n.consumer_id, n.event_id, n.created_at,
           coalesce(n.customer_id, n.consumer_id), n.sequence
    FROM new_rows n
    JOIN webhook_endpoints w
      ON w.consumer_id = n.consumer_id AND w.status = 'enabled' AND w.deleted_at IS NULL
     AND (w.event_types IS NULL OR n.event_type = ANY (w.event_types))
    ON CONFLICT ON CONSTRAINT webhook_deliveries_endpoint_event DO NOTHING;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS trg_customer_events_webhook_fanout ON customer_events;
CREATE TRIGGER trg_customer_events_webhook_fanout AFTER INSERT ON customer_events
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION fintegrate_webhook_fanout();

COMMIT;
