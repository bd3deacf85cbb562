"""`fintegrate config show`: values, masking and the source of every setting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.cli import RunCli

ENV_FILE = """\
FINTEGRATE_API_URL=http://from-file:1
FINTEGRATE_REDIS_URL=redis://from-file:6379/3
FINTEGRATE_BCRYPT_ROUNDS=6
FINTEGRATE_ADMIN_API_KEY=file-admin-secret
FINTEGRATE_DATABASE_URL=postgresql+psycopg2://fuser:file-db-pass@db.example:5432/fdb
"""


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    path = tmp_path / "custom.env"
    path.write_text(ENV_FILE)
    return path


def config_json(run_cli: RunCli, *args: str) -> dict[str, dict[str, object]]:
    result = run_cli(*args, "config", "show", "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_flag_beats_environment_beats_env_file_beats_default(
    run_cli: RunCli, env_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINTEGRATE_API_URL", "http://from-env:2")
    monkeypatch.setenv("FINTEGRATE_REDIS_URL", "redis://from-env:6379/4")
    shown = config_json(run_cli, "--env-file", str(env_file), "--api-url", "http://from-flag:3")

    assert shown["api_url"] == {
        "value": "http://from-flag:3",
        "source": "flag",
        "env_var": "FINTEGRATE_API_URL",
    }
    assert shown["redis_url"]["value"] == "redis://from-env:6379/4"
    assert shown["redis_url"]["source"] == "environment"
    assert shown["bcrypt_rounds"] == {
        "value": 6,
        "source": ".env file",
        "env_var": "FINTEGRATE_BCRYPT_ROUNDS",
    }
    assert shown["max_body_bytes"]["source"] == "default"
    assert shown["max_body_bytes"]["value"] == 1024 * 1024


def test_secrets_and_url_passwords_are_masked(run_cli: RunCli, env_file: Path) -> None:
    result = run_cli("--env-file", str(env_file), "--api-key", "flag-tenant-key", "config", "show")
    assert result.exit_code == 0, result.stderr
    for secret in ("file-admin-secret", "file-db-pass", "flag-tenant-key"):
        assert secret not in result.stdout

    shown = config_json(run_cli, "--env-file", str(env_file), "--api-key", "flag-tenant-key")
    assert shown["admin_api_key"] == {
        "value": "********",
        "source": ".env file",
        "env_var": "FINTEGRATE_ADMIN_API_KEY",
    }
    assert shown["api_key"]["value"] == "********"
    assert shown["api_key"]["source"] == "flag"
    assert shown["database_url"]["value"] == (
        "postgresql+psycopg2://fuser:********@db.example:5432/fdb"
    )


def test_dot_env_in_working_directory_is_read_by_default(run_cli: RunCli) -> None:
    Path(".env").write_text("FINTEGRATE_API_URL=http://from-dot-env:9\n")
    shown = config_json(run_cli)
    assert shown["api_url"]["value"] == "http://from-dot-env:9"
    assert shown["api_url"]["source"] == ".env file"
    assert shown["admin_api_key"] == {
        "value": None,
        "source": "default",
        "env_var": "FINTEGRATE_ADMIN_API_KEY",
    }


def test_the_table_names_each_source(run_cli: RunCli, env_file: Path) -> None:
    result = run_cli("--env-file", str(env_file), "--api-url", "http://x:1", "config", "show")
    assert result.exit_code == 0, result.stderr
    for source in ("flag", ".env file", "default"):
        assert source in result.stdout


def test_missing_env_file_is_a_usage_error(run_cli: RunCli, tmp_path: Path) -> None:
    result = run_cli("--env-file", str(tmp_path / "absent.env"), "config", "show")
    assert result.exit_code == 2
    assert "does not exist" in result.stderr
    assert result.stdout == ""


def test_invalid_setting_is_one_line(run_cli: RunCli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINTEGRATE_BCRYPT_ROUNDS", "not-a-number")
    result = run_cli("config", "show")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Error: invalid configuration: bcrypt_rounds")


def test_every_node_and_host_of_a_clustered_url_is_masked(run_cli: RunCli, tmp_path: Path) -> None:
    path = tmp_path / "cluster.env"
    path.write_text(
        "FINTEGRATE_RABBITMQ_URL=amqp://u:pw-one@h1:5791/v,amqp://u:pw-one@h2:5792/v\n"
        "FINTEGRATE_RABBITMQ_MANAGEMENT_URL=http://u:pw-two@h1:15791,http://u:pw-two@h2:15792\n"
        "FINTEGRATE_DATABASE_URL=postgresql://d:pw-three@h1:5491,h2:5492/db"
        "?target_session_attrs=read-write\n"
    )
    result = run_cli("--env-file", str(path), "config", "show", "--json")
    assert result.exit_code == 0, result.stderr
    assert "pw-" not in result.stdout

    shown = json.loads(result.stdout)
    assert shown["rabbitmq_url"]["value"] == (
        "amqp://u:********@h1:5791/v,amqp://u:********@h2:5792/v"
    )
    assert shown["rabbitmq_management_url"]["value"] == (
        "http://u:********@h1:15791,http://u:********@h2:15792"
    )
    assert shown["database_url"]["value"] == (
        "postgresql+psycopg2://d:********@h1:5491,h2:5492/db?target_session_attrs=read-write"
    )


def test_the_table_lists_settings_by_component(run_cli: RunCli, env_file: Path) -> None:
    result = run_cli("--env-file", str(env_file), "config", "show")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()

    def rows_of(group: str) -> list[int]:
        return [i for i, line in enumerate(lines) if f"│ {group}." in line]

    gateway, relay, history = rows_of("gateway"), rows_of("relay"), rows_of("history")
    assert gateway and relay and history
    assert max(gateway) < min(relay) and max(relay) < min(history)
    assert "auth.bcrypt_rounds" in result.stdout
