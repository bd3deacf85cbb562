"""`fintegrate consumer ...` against the live API on real Postgres and RabbitMQ."""

from __future__ import annotations

from typing import Any

import pika
import pika.exceptions
import pytest

from service.app import create_app
from service.auth.keys import KEY_PATTERN
from service.config import Settings
from service.messaging import topology
from tests.support.cli import RunCli, json_of, one_error_line
from tests.support.live_server import LiveServer
from tests.support.names import unique_name
from tests.support.ports import closed_port


def test_create_prints_key_and_queue_once(tenant: dict[str, str]) -> None:
    assert tenant["api_key"].startswith("fk_")
    assert tenant["queue_name"] == topology.queue_name(tenant["name"])
    assert tenant["status"] == "active"
    assert tenant["description"] == "made by a test"


def test_create_table_for_people(run_cli: RunCli, api_env: Settings) -> None:
    name = unique_name("cli")
    result = run_cli("consumer", "create", name)
    assert result.exit_code == 0, result.stderr
    assert "api_key" in result.stdout
    assert name in result.stdout
    [key_line] = [line for line in result.stdout.splitlines() if line.startswith("API key: ")]
    key = key_line.removeprefix("API key: ")
    assert KEY_PATTERN.fullmatch(key), "the whole key on one copyable line"
    as_new_tenant = run_cli("--admin-key", "", "--api-key", key, "customers", "list", "--json")
    assert as_new_tenant.exit_code == 0, as_new_tenant.stderr


def test_list_as_operator_and_as_tenant(run_cli: RunCli, tenant: dict[str, str]) -> None:
    everyone = json_of(run_cli("consumer", "list", "--json"))
    assert tenant["name"] in {item["name"] for item in everyone}
    assert all("api_key" not in item for item in everyone)

    own = json_of(
        run_cli("--admin-key", "", "--api-key", tenant["api_key"], "--json", "consumer", "list")
    )
    assert [item["name"] for item in own] == [tenant["name"]]


def test_show_by_name_and_by_id(run_cli: RunCli, tenant: dict[str, str]) -> None:
    by_name = json_of(run_cli("consumer", "show", tenant["name"], "--json"))
    by_id = json_of(run_cli("consumer", "show", tenant["consumer_id"], "--json"))
    assert by_name == by_id
    assert by_name["consumer_id"] == tenant["consumer_id"]


def test_disable_refuses_the_key_and_enable_restores_it(
    run_cli: RunCli, tenant: dict[str, str]
) -> None:
    tenant_args = ("--api-key", tenant["api_key"], "customers", "list", "--json")
    assert json_of(run_cli(*tenant_args)) == []

    disabled = json_of(run_cli("consumer", "disable", tenant["name"], "--json"))
    assert disabled["status"] == "disabled"
    refused = run_cli(*tenant_args)
    assert refused.exit_code == 1
    assert "API error 403: This consumer is disabled" in one_error_line(refused)

    enabled = json_of(run_cli("consumer", "enable", tenant["consumer_id"], "--json"))
    assert enabled["status"] == "active"
    assert json_of(run_cli(*tenant_args)) == []


def test_unknown_consumer_is_one_line_exit_1(run_cli: RunCli, api_env: Settings) -> None:
    for missing in ("no_such_consumer", "00000000-0000-4000-8000-000000000000"):
        result = run_cli("consumer", "show", missing)
        assert result.exit_code == 1
        assert f"no consumer '{missing}'" in one_error_line(result)
        assert result.stdout == ""


def test_missing_admin_key_is_a_usage_error(
    run_cli: RunCli, api_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FINTEGRATE_ADMIN_API_KEY")
    result = run_cli("consumer", "create", unique_name("cli"))
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "--admin-key" in line
    assert "FINTEGRATE_ADMIN_API_KEY" in line


def test_wrong_admin_key_is_one_line_exit_1(run_cli: RunCli, api_env: Settings) -> None:
    result = run_cli("--admin-key", "not-the-key-" + "x" * 32, "consumer", "list")
    assert result.exit_code == 1
    assert one_error_line(result).startswith("Error: API error 401")


def test_invalid_name_is_refused_by_the_api(run_cli: RunCli, api_env: Settings) -> None:
    result = run_cli("consumer", "create", "Bad-Name")
    assert result.exit_code == 1
    assert "API error 422" in one_error_line(result)


def test_api_down_is_one_line_exit_1(run_cli: RunCli, api_env: Settings) -> None:
    result = run_cli("--api-url", f"http://127.0.0.1:{closed_port()}", "consumer", "list")
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "unreachable" in line
    assert "FINTEGRATE_API_URL" in line


def test_create_with_the_broker_down_says_to_provision_later(
    run_cli: RunCli, api_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead_broker = f"amqp://fintegrate_user:fintegrate_pass@127.0.0.1:{closed_port()}/x"
    server = LiveServer(create_app(api_env.updated({"rabbitmq_url": dead_broker})))
    server.start()
    try:
        name = unique_name("cli")
        result = run_cli("--api-url", server.url, "consumer", "create", name, "--json")
    finally:
        server.stop()
    created = json_of(result)
    assert created["queue_provisioned"] is False
    assert f"fintegrate queues provision {name}" in result.stderr


def broker_login_works(url: str) -> bool:
    parameters = pika.URLParameters(url)
    parameters.connection_attempts = 1
    try:
        pika.BlockingConnection(parameters).close()
    except pika.exceptions.AMQPConnectionError:
        return False
    return True


def test_create_prints_the_tenants_own_broker_url_once(run_cli: RunCli, api_env: Settings) -> None:
    result = run_cli("consumer", "create", unique_name("cli"))
    assert result.exit_code == 0, result.stderr
    [line] = [x for x in result.stdout.splitlines() if x.startswith("FINTEGRATE_RABBITMQ_URL=")]
    url = line.removeprefix("FINTEGRATE_RABBITMQ_URL=")
    assert "fintegrate_pass" not in url and broker_login_works(url)
    assert "broker password" in result.stderr


def test_rotate_broker_credentials_replaces_the_login(
    run_cli: RunCli, tenant: dict[str, Any]
) -> None:
    old = tenant["broker"]
    rotated = json_of(run_cli("consumer", "rotate-broker-credentials", tenant["name"], "--json"))
    assert rotated["username"] == old["username"] and rotated["password"] != old["password"]
    base = f"amqp://{{}}:{{}}@127.0.0.1:5672/{old['vhost']}"
    assert not broker_login_works(base.format(old["username"], old["password"]))
    assert broker_login_works(base.format(rotated["username"], rotated["password"]))
    unknown = run_cli("consumer", "rotate-broker-credentials", unique_name("nobody"))
    assert unknown.exit_code == 1 and "no consumer" in one_error_line(unknown)
