"""`fintegrate events …` against a live API, the real database and broker."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine

from service.config import Settings
from service.messaging import topology
from tests.support.cli import RunCli, json_of
from tests.support.outbox import amqp_channel, drain_queue, event_rows, insert_events


def scope(tenant: dict[str, Any]) -> list[str]:
    return ["--consumer", tenant["name"]]


def test_resend_dry_run_previews_per_consumer_and_type_and_changes_nothing(
    run_cli: RunCli, api_env: Settings, engine: Engine, tenant: dict[str, Any]
) -> None:
    creations = insert_events(engine, tenant["consumer_id"], 3)
    deletions = insert_events(engine, tenant["consumer_id"], 2, "customer_deletion")
    before = {key: tuple(row) for key, row in event_rows(engine, creations + deletions).items()}
    result = run_cli("events", "resend", *scope(tenant), "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert "customer_creation" in result.stdout and "customer_deletion" in result.stdout
    assert "nothing changed" in result.stderr
    preview = json_of(run_cli("events", "resend", *scope(tenant), "--dry-run", "--json"))
    counts = {group["event_type"]: group["count"] for group in preview["groups"]}
    assert (counts["customer_creation"], counts["customer_deletion"]) == (3, 2)
    after = {key: tuple(row) for key, row in event_rows(engine, creations + deletions).items()}
    assert after == before


def test_resend_without_yes_off_a_terminal_refuses(
    run_cli: RunCli, api_env: Settings, engine: Engine, tenant: dict[str, Any]
) -> None:
    insert_events(engine, tenant["consumer_id"], 1)
    result = run_cli("events", "resend", *scope(tenant))
    assert result.exit_code == 2
    assert "--yes" in result.stderr


def test_resend_yes_publishes_with_a_summary(
    run_cli: RunCli, api_env: Settings, engine: Engine, tenant: dict[str, Any]
) -> None:
    ids = insert_events(engine, tenant["consumer_id"], 7)
    result = run_cli(
        "events",
        "resend",
        *scope(tenant),
        "--event-type",
        "customer_creation",
        "--chunk-size",
        "3",
        "--yes",
        "--json",
    )
    summary = json_of(result)
    assert summary == {"matched": 7, "republished": 7, "failed": 0, "held_back": 0}
    assert {row.publish_status for row in event_rows(engine, ids).values()} == {"published"}
    published = {p.message_id for _, p, _ in drain_queue(api_env.broker.url, tenant["queue_name"])}
    assert set(ids) <= published


def test_partial_failure_exits_3(
    run_cli: RunCli, api_env: Settings, engine: Engine, tenant: dict[str, Any]
) -> None:
    name = tenant["name"]
    with amqp_channel(api_env.broker.url) as channel:
        channel.queue_unbind(
            topology.queue_name(name),
            topology.EXCHANGE,
            topology.routing_key("customer_deletion", name),
        )
    insert_events(engine, tenant["consumer_id"], 2)
    insert_events(engine, tenant["consumer_id"], 1, "customer_deletion")
    result = run_cli(
        "events",
        "resend",
        *scope(tenant),
        "--event-type",
        "customer_creation",
        "--event-type",
        "customer_deletion",
        "--yes",
        "--json",
    )
    assert result.exit_code == 3, result.stderr
    assert "failed to publish" in result.stderr


def test_redeliver_tenant_key_and_stats(
    run_cli: RunCli,
    api_env: Settings,
    engine: Engine,
    tenant: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FINTEGRATE_ADMIN_API_KEY")
    monkeypatch.setenv("FINTEGRATE_API_KEY", tenant["api_key"])
    ids = insert_events(engine, tenant["consumer_id"], 2)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "UPDATE customer_events SET publish_status = 'published' "
            "WHERE event_id = ANY(%s::uuid[])",
            (ids,),
        )
    summary = json_of(run_cli("--json", "events", "redeliver", "--yes"))
    assert summary == {"matched": 2, "republished": 2, "failed": 0, "held_back": 0}
    listed = json_of(run_cli("events", "list", "--publish-status", "published", "--json"))
    assert set(ids) <= {event["event_id"] for event in listed}
    shown = json_of(run_cli("events", "show", ids[0], "--json"))
    assert shown["publish_try_count"] == 1
    stats = json_of(run_cli("events", "stats", "--consumer", tenant["name"], "--json"))
    published = [row for row in stats["counts"] if row["publish_status"] == "published"]
    assert sum(row["count"] for row in published) == 2
    assert stats["outbox_pending"] >= 1  # the tenant's own consumer_created event, at least
    assert stats["oldest_pending_age_seconds"] is not None
