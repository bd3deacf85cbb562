"""`fintegrate doctor` on real services: healthy, warnings, and each dependency down."""

from __future__ import annotations

import json

import pytest

from service.config import Settings
from tests.fintegrate_cli.conftest import RunCli, closed_port, one_error_line


def doctor_json(run_cli: RunCli, *args: str) -> tuple[int, dict[str, dict[str, object]], str]:
    result = run_cli(*args, "doctor", "--json")
    checks = {check["name"]: check for check in json.loads(result.stdout)}
    for check in checks.values():
        assert check["status"] in ("ok", "warn", "fail")
        assert check["detail"]
        assert check["status"] == "ok" or check["hint"]
    return result.exit_code, checks, one_error_line(result) if result.exit_code else ""


def test_database_down_fails_with_exit_1(run_cli: RunCli, service_env: Settings) -> None:
    dead_db = f"postgresql+psycopg2://fintegrate_user:x@127.0.0.1:{closed_port()}/nope"
    code, checks, error = doctor_json(run_cli, "--database-url", dead_db)
    assert code == 1
    assert checks["database"]["status"] == "fail"
    assert "FINTEGRATE_DATABASE_URL" in str(checks["database"]["hint"])
    assert "migrations" not in checks  # nothing that needs the database is claimed
    assert "database" in error


def test_broker_down_fails_with_exit_1(run_cli: RunCli, service_env: Settings) -> None:
    dead_broker = f"amqp://fintegrate_user:fintegrate_pass@127.0.0.1:{closed_port()}/x"
    code, checks, error = doctor_json(run_cli, "--rabbitmq-url", dead_broker)
    assert code == 1
    assert checks["database"]["status"] == "ok"
    assert checks["migrations"]["status"] == "ok"
    assert checks["rabbitmq"]["status"] == "fail"
    assert "FINTEGRATE_RABBITMQ_URL" in str(checks["rabbitmq"]["hint"])
    assert "rabbitmq" in error


def test_redis_down_is_only_a_warning(
    run_cli: RunCli, service_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINTEGRATE_REDIS_URL", f"redis://127.0.0.1:{closed_port()}/0")
    code, checks, _ = doctor_json(run_cli)
    assert checks["redis"]["status"] == "warn"
    assert "fails open" in str(checks["redis"]["detail"])
    assert code in (1, 3)  # the API may also be absent here; never 0 with a warning


def test_table_for_people(run_cli: RunCli, service_env: Settings) -> None:
    result = run_cli("--api-url", f"http://127.0.0.1:{closed_port()}", "doctor")
    assert "fintegrate doctor" in result.stdout
    assert "database" in result.stdout
    assert result.exit_code == 1
    assert "api" in one_error_line(result)
