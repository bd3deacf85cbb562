"""The schema the migrations produce (SPEC §3): tables, columns, constraints, triggers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from tests.support.names import unique_name

REQUIRED_COLUMNS = {
    "consumers": "consumer_id name description status metadata_json created_at updated_at",
    "consumer_api_keys": "key_id consumer_id key_prefix key_hash is_active created_at "
    "last_used_at revoked_at expires_at",
    "customers": "customer_id consumer_id name email status created_at updated_at deleted_at",
    "customer_events": "event_id customer_id consumer_id event_type source_service payload_json "
    "metadata_json publish_status publish_try_count publish_failure_reason published_at "
    "deliver_status deliver_try_count delivered_at created_at sequence traceparent",
    "customer_tags": "customer_id",
    "customer_analytics": "customer_id metrics_json",
    "consumer_event_receipts": "event_id consumer_id status detail received_at",
    "audit_log": "request_id",
    "idempotency_keys": "idempotency_key_id consumer_id idempotency_key request_fingerprint "
    "customer_id response_json created_at",
    "event_sequences": "event_sequence_id consumer_id aggregate_id last_sequence",
    "delivered_sequences": "delivered_sequence_id consumer_id aggregate_id sequence event_id",
    "event_publish_failures": "event_publish_failure_id event_id relay_id reason attempts "
    "first_failed_at last_failed_at",
    "relay_partitions": "relay_partition_id partition_no owner_id fencing_token lease_expires_at",
    "relay_members": "relay_id partition_count heartbeat_at",
    "republish_budgets": "republish_budget_id consumer_id tokens refilled_at",
    "customer_event_counts": "event_count_id consumer_id event_type publish_status "
    "deliver_status events",
    "migration_history": "version filename checksum applied_at execution_ms applied_by",
    "webhook_endpoints": "endpoint_id consumer_id url description event_types status "
    "created_at updated_at deleted_at",
    "webhook_endpoint_secrets": "secret_id endpoint_id ciphertext created_at expires_at",
    "webhook_deliveries": "delivery_id endpoint_id consumer_id event_id sequence status "
    "attempt_count next_attempt_at claim_token",
    "webhook_attempts": "attempt_id delivery_id endpoint_id event_id attempt_number status "
    "started_at duration_ms response_status response_body error next_attempt_at",
}
UPDATED_AT_TABLES = ("consumers", "customers", "customer_tags")


@pytest.fixture
def db(engine: Engine) -> Iterator[Connection]:
    """One transaction per test, rolled back at the end."""
    with engine.connect() as connection:
        transaction = connection.begin()
        yield connection
        transaction.rollback()


def scalar(connection: Connection, sql: str, **params: Any) -> Any:
    return connection.execute(text(sql), params).scalar()


def insert_consumer(connection: Connection, name: str | None = None) -> uuid.UUID:
    return scalar(
        connection,
        "INSERT INTO consumers (name) VALUES (:name) RETURNING consumer_id",
        name=name or unique_name("c"),
    )


def insert_event(connection: Connection) -> uuid.UUID:
    return scalar(
        connection,
        "INSERT INTO customer_events (consumer_id, customer_id, event_type, source_service, "
        "payload_json) VALUES (:c, :cu, 'customer_creation', 'test', '{\"a\": 1}') "
        "RETURNING event_id",
        c=uuid.uuid4(),
        cu=uuid.uuid4(),
    )


@pytest.mark.parametrize("table", sorted(REQUIRED_COLUMNS))
def test_table_has_required_columns(db: Connection, table: str) -> None:
    columns = set(
        db.execute(
            text("SELECT column_name FROM information_schema.columns WHERE table_name = :t"),
            {"t": table},
        ).scalars()
    )
    assert set(REQUIRED_COLUMNS[table].split()) <= columns


def test_uuid_primary_keys_default_to_gen_random_uuid(db: Connection) -> None:
    rows = db.execute(
        text(
            "SELECT c.table_name, c.data_type, c.column_default "
            "FROM information_schema.table_constraints t "
            "JOIN information_schema.key_column_usage k USING (constraint_name, table_name) "
            "JOIN information_schema.columns c USING (table_name, column_name) "
            "JOIN pg_class r ON r.oid = to_regclass(c.table_name) "
            "WHERE t.constraint_type = 'PRIMARY KEY' AND t.table_schema = 'public' "
            "AND t.table_name <> 'migration_history' AND NOT r.relispartition "
            # a partitioned table's key must contain its partition key (customer_events:
            # event_id, created_at): the UUID is the first column
            "AND k.ordinal_position = 1"
        )
    ).all()
    assert {row.table_name for row in rows} == set(REQUIRED_COLUMNS) - {"migration_history"}
    assert all(r.data_type == "uuid" and "gen_random_uuid" in r.column_default for r in rows)


def test_no_foreign_keys(db: Connection) -> None:
    assert scalar(db, "SELECT count(*) FROM pg_constraint WHERE contype = 'f'") == 0


def test_every_uuid_reference_column_leads_an_index(db: Connection) -> None:
    references = db.execute(
        text(
            "SELECT table_name, column_name FROM information_schema.columns c "
            "WHERE table_schema = 'public' AND data_type = 'uuid' AND NOT EXISTS ("
            "  SELECT 1 FROM information_schema.key_column_usage k "
            "  JOIN information_schema.table_constraints t USING (constraint_name, table_name) "
            "  WHERE t.constraint_type = 'PRIMARY KEY' AND k.table_name = c.table_name "
            "  AND k.column_name = c.column_name)"
        )
    ).all()
    assert references
    leading = set(
        db.execute(
            text(
                "SELECT i.indrelid::regclass::text || '.' || a.attname FROM pg_index i "
                "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
            )
        ).scalars()
    )
    missing = [f"{r.table_name}.{r.column_name}" for r in references]
    assert [m for m in missing if m not in leading] == []


def test_named_constraints_and_indexes_exist(db: Connection) -> None:
    pattern = scalar(
        db,
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = :n",
        n="consumers_name_pattern",
    )
    assert "^[a-z0-9_]+$" in pattern
    one_active = db.execute(
        text(
            "SELECT ix.indisunique, pg_get_expr(ix.indpred, ix.indrelid) AS predicate "
            "FROM pg_index ix JOIN pg_class c ON c.oid = ix.indexrelid WHERE c.relname = :n"
        ),
        {"n": "ux_consumer_api_keys_one_active"},
    ).one()
    assert one_active.indisunique and "is_active" in one_active.predicate
    receipt = scalar(
        db,
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = :n",
        n="consumer_event_receipts_unique",
    )
    assert receipt == "UNIQUE (event_id, consumer_id, status)"


def test_triggers_exist(db: Connection) -> None:
    names = set(db.execute(text("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")).scalars())
    expected = {f"trg_{table}_updated_at" for table in UPDATED_AT_TABLES}
    expected |= {"trg_customer_events_append_only", "trg_customer_events_no_truncate"}
    assert expected <= names


UPDATED_AT_CASES = {
    "consumers": (
        "INSERT INTO consumers (name) VALUES (:name) RETURNING consumer_id",
        "UPDATE consumers SET description = 'x' WHERE consumer_id = :id",
        "consumer_id",
    ),
    "customers": (
        "INSERT INTO customers (consumer_id, name) VALUES (gen_random_uuid(), :name) "
        "RETURNING customer_id",
        "UPDATE customers SET status = 'inactive' WHERE customer_id = :id",
        "customer_id",
    ),
    "customer_tags": (
        "INSERT INTO customer_tags (customer_id, consumer_id, tag_key, tag_value) "
        "VALUES (gen_random_uuid(), gen_random_uuid(), :name, '1') RETURNING tag_id",
        "UPDATE customer_tags SET tag_value = '2' WHERE tag_id = :id",
        "tag_id",
    ),
}


@pytest.mark.parametrize("table", UPDATED_AT_TABLES)
def test_updated_at_trigger_moves_updated_at(engine: Engine, table: str) -> None:
    insert, update, key = UPDATED_AT_CASES[table]
    with engine.begin() as connection:
        row_id = scalar(connection, insert, name=unique_name("u"))
    with engine.begin() as connection:  # now() is the transaction start: use a later one
        connection.execute(text(update), {"id": row_id})
        row = connection.execute(
            text(f"SELECT created_at, updated_at FROM {table} WHERE {key} = :id"), {"id": row_id}
        ).one()
    assert row.updated_at > row.created_at


def test_name_pattern_refuses_bad_names(db: Connection) -> None:
    insert_consumer(db, unique_name("good"))
    with pytest.raises(IntegrityError, match="consumers_name_pattern"), db.begin_nested():
        insert_consumer(db, "Bad-Name")


def test_second_active_key_for_one_consumer_is_refused(db: Connection) -> None:
    consumer_id = insert_consumer(db)
    insert_key = text(
        "INSERT INTO consumer_api_keys (consumer_id, key_prefix, key_hash, is_active) "
        "VALUES (:c, :p, 'hash', :active)"
    )
    db.execute(insert_key, {"c": consumer_id, "p": unique_name("p"), "active": False})
    db.execute(insert_key, {"c": consumer_id, "p": unique_name("p"), "active": True})
    with pytest.raises(IntegrityError, match="ux_consumer_api_keys_one_active"), db.begin_nested():
        db.execute(insert_key, {"c": consumer_id, "p": unique_name("p"), "active": True})


def test_receipts_are_unique_per_event_consumer_status(db: Connection) -> None:
    receipt = text(
        "INSERT INTO consumer_event_receipts (event_id, consumer_id, status) VALUES (:e, :c, :s)"
    )
    event_id, consumer_id = uuid.uuid4(), uuid.uuid4()
    db.execute(receipt, {"e": event_id, "c": consumer_id, "s": "received"})
    db.execute(receipt, {"e": event_id, "c": consumer_id, "s": "processed"})
    with pytest.raises(IntegrityError, match="consumer_event_receipts_unique"), db.begin_nested():
        db.execute(receipt, {"e": event_id, "c": consumer_id, "s": "received"})


def test_events_cannot_be_deleted(db: Connection) -> None:
    event_id = insert_event(db)
    with pytest.raises(DBAPIError, match="append-only: DELETE"), db.begin_nested():
        db.execute(text("DELETE FROM customer_events WHERE event_id = :e"), {"e": event_id})


def test_events_cannot_be_truncated(db: Connection) -> None:
    insert_event(db)
    with pytest.raises(DBAPIError, match="append-only: TRUNCATE"), db.begin_nested():
        db.execute(text("TRUNCATE customer_events"))


@pytest.mark.parametrize(
    "assignment",
    [
        "event_id = gen_random_uuid()",
        "customer_id = gen_random_uuid()",
        "consumer_id = gen_random_uuid()",
        "event_type = 'customer_deletion'",
        "source_service = 'other'",
        "payload_json = '{\"a\": 2}'",
        "metadata_json = '{\"m\": 1}'",
        "created_at = now() - interval '1 day'",
        "traceparent = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'",
    ],
)
def test_event_content_cannot_change(db: Connection, assignment: str) -> None:
    event_id = insert_event(db)
    with pytest.raises(DBAPIError, match="append-only"), db.begin_nested():
        db.execute(
            text(f"UPDATE customer_events SET {assignment} WHERE event_id = :e"), {"e": event_id}
        )


def test_bookkeeping_columns_may_change(db: Connection) -> None:
    event_id = insert_event(db)
    db.execute(
        text(
            "UPDATE customer_events SET publish_status = 'published', publish_try_count = 2, "
            "publish_failure_reason = 'earlier timeout', published_at = now(), "
            "next_attempt_at = now(), deliver_status = 'delivered', deliver_try_count = 1, "
            "delivered_at = now() WHERE event_id = :e"
        ),
        {"e": event_id},
    )
    row = db.execute(
        text("SELECT publish_status, deliver_status FROM customer_events WHERE event_id = :e"),
        {"e": event_id},
    ).one()
    assert tuple(row) == ("published", "delivered")
