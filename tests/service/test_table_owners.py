"""One owner per table: the SQL naming a table sits in its owner's module (docs/ARCHITECTURE.md).

A statement may name a table it does not own only when it is listed in ``EXCEPTIONS`` with
its reason: one statement on purpose (atomicity or speed), or code still to move.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CREATE_TABLE = re.compile(r"^\s*CREATE TABLE (?:IF NOT EXISTS )?(\w+)", re.MULTILINE)
NAMED_TABLE = re.compile(r"\b(?:FROM|JOIN|INTO|UPDATE|TABLE)\s+(\w+)")

EVENTS = "service/events/repository.py"
CUSTOMERS = "service/customers/repository.py"
WEBHOOK_DELIVERIES = "service/webhooks/delivery/repository.py"
OWNERS = {
    "audit_log": {"service/http/audit.py"},
    "consumer_api_keys": {"service/auth/repository.py"},
    "consumer_event_receipts": {EVENTS},
    "consumers": {"service/consumers/repository.py"},
    "customer_analytics": {CUSTOMERS},
    "customer_event_counts": {"service/events/stats.py"},
    "customer_events": {
        EVENTS,
        "service/events/outbox.py",
        "service/events/partitions.py",
        "service/events/expiry.py",
    },
    "customer_events_default": {"service/events/partitions.py"},
    "customer_tags": {CUSTOMERS},
    "customers": {CUSTOMERS},
    "delivered_sequences": {EVENTS},
    "event_publish_failures": {"service/events/outbox.py"},
    "event_sequences": set(),  # written by the sequence trigger only (migration 20261202_0500)
    "idempotency_keys": {CUSTOMERS},
    "migration_history": {"service/migrations/runner.py"},
    "relay_members": {"service/messaging/publish/leases.py"},
    "relay_partitions": {"service/messaging/publish/leases.py"},
    "republish_budgets": {"service/delivery/repository.py"},
    "webhook_endpoints": {"service/webhooks/repository.py"},
    "webhook_endpoint_secrets": {"service/webhooks/repository.py"},
    "webhook_deliveries": {WEBHOOK_DELIVERIES},
    "webhook_attempts": {WEBHOOK_DELIVERIES},
}
EXCEPTIONS = {
    ("service/bench/baseline_app.py", "customers"): "the benchmark's baseline: plain inserts",
    ("service/bench/baseline_app.py", "customer_events"): "the benchmark's baseline: plain inserts",
    ("service/bench/statements.py", "customer_events"): "bench backlogs, the relay baselines",
    ("service/bench/statements.py", "consumers"): "bench tenants without keys or events",
    ("service/bench/history_data.py", "customer_events"): "bench history: a bulk load",
    ("service/bench/history_data.py", "event_sequences"): "bench history numbers its events",
    ("service/bench/history_data.py", "consumers"): "bench history reads its tenant's name",
    (CUSTOMERS, "customer_events"): "the customer and its customer_creation event: one statement",
    ("service/delivery/repository.py", "customer_events"): "the republish selection (reads)",
    ("service/delivery/repository.py", "consumers"): "the republish selection joins names",
    ("service/auth/repository.py", "consumers"): "the key lookup joins its consumer's limits",
    ("service/events/outbox.py", "consumers"): "the relay's reads join the routing names",
    ("service/events/expiry.py", "consumer_event_receipts"): "an expired event and its receipt",
    (WEBHOOK_DELIVERIES, "customer_events"): "the claim reads its events; recover's window",
    (WEBHOOK_DELIVERIES, "consumers"): "the claim joins the consumer name of the body",
    (WEBHOOK_DELIVERIES, "webhook_endpoints"): "the claim checks status, breaker and cap",
    ("service/events/outbox.py", "relay_members"): "a failed attempt's relay host and pid",
}


def migration_tables() -> set[str]:
    return {
        name
        for path in (ROOT / "migrations").glob("*.sql")
        for name in CREATE_TABLE.findall(path.read_text())
    }


def named_tables() -> set[tuple[str, str]]:
    """(module, table) for every table of the migrations named in a statement under service/."""
    tables = migration_tables()
    return {
        (str(path.relative_to(ROOT)), table)
        for path in (ROOT / "service").rglob("*.py")
        for table in set(NAMED_TABLE.findall(path.read_text())) & tables
    }


def test_every_table_has_an_owner() -> None:
    assert migration_tables() == set(OWNERS)


def test_sql_names_a_table_only_in_its_owner_or_a_listed_exception() -> None:
    stray = {
        (module, table)
        for module, table in named_tables()
        if module not in OWNERS[table] and (module, table) not in EXCEPTIONS
    }
    assert not stray, f"SQL outside the table's owner (docs/ARCHITECTURE.md): {sorted(stray)}"


def test_every_exception_is_still_needed() -> None:
    assert set(EXCEPTIONS) <= named_tables()
