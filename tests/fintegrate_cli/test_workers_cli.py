"""`fintegrate relay` and `fintegrate consume`: options, usage errors, a one-shot relay run."""

from __future__ import annotations

import gc
from typing import Any

from sqlalchemy import Engine

from service.config import Settings
from tests.support.cli import RunCli, json_of, one_error_line
from tests.support.names import unique_name
from tests.support.outbox import event_rows, insert_events, queue_depth


def test_relay_once_publishes_what_is_due(
    run_cli: RunCli, api_env: Settings, engine: Engine, tenant: dict[str, Any]
) -> None:
    ids = insert_events(engine, tenant["consumer_id"], 5)
    gc.unfreeze()
    result = run_cli("-q", "relay", "--once", "--batch-size", "2")
    assert result.exit_code == 0, result.stderr
    assert gc.get_freeze_count() > 0  # set-up's objects are out of full collections
    assert {row.publish_status for row in event_rows(engine, ids).values()} == {"published"}
    assert queue_depth(api_env.broker.url, tenant["queue_name"]) >= 5


def test_consume_without_a_tenant_key_is_a_usage_error(
    run_cli: RunCli, service_env: Settings
) -> None:
    result = run_cli("consume", "--consumer", "acme")
    assert result.exit_code == 2
    assert "FINTEGRATE_API_KEY" in result.stderr


def test_consume_with_an_unloadable_handler_is_a_usage_error(
    run_cli: RunCli, service_env: Settings
) -> None:
    result = run_cli(
        "--api-key", "fk_abc_def", "consume", "--consumer", "acme", "--handler", "nowhere:nothing"
    )
    assert result.exit_code == 2
    assert "cannot be loaded" in result.stderr


def test_consume_rejects_a_bad_consumer_name(run_cli: RunCli, service_env: Settings) -> None:
    result = run_cli("--api-key", "fk_abc_def", "consume", "--consumer", "Not-Valid")
    assert result.exit_code == 2


def test_consume_with_another_tenants_key_exits_2_before_taking_anything(
    run_cli: RunCli, api_env: Settings, engine: Engine, tenant: dict[str, Any]
) -> None:
    other = json_of(run_cli("consumer", "create", unique_name("cli"), "--json"))
    insert_events(engine, tenant["consumer_id"], 3)
    assert run_cli("-q", "relay", "--once").exit_code == 0
    depth = queue_depth(api_env.broker.url, tenant["queue_name"])
    assert depth >= 3

    result = run_cli("--api-key", other["api_key"], "consume", "--consumer", tenant["name"])

    assert result.exit_code == 2
    line = one_error_line(result)
    assert tenant["name"] in line and other["name"] in line
    assert queue_depth(api_env.broker.url, tenant["queue_name"]) == depth


def test_consume_with_a_refused_key_is_one_error_line(
    run_cli: RunCli, api_env: Settings, tenant: dict[str, Any]
) -> None:
    forged = tenant["api_key"][:-4] + "AAAA"
    result = run_cli("--api-key", forged, "consume", "--consumer", tenant["name"])
    assert result.exit_code == 1
    assert "401" in one_error_line(result)
