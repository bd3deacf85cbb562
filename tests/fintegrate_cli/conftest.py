"""CLI test helpers: a clean environment, a runner on the real app, a closed port."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from fintegrate_cli.main import app
from service.config import Settings
from tests.conftest import unique_name

RunCli = Callable[..., Result]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]) -> None:
    """No FINTEGRATE_* variables and a working directory without a .env file."""
    for key in list(os.environ):
        if key.upper().startswith("FINTEGRATE_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def run_cli(clean_env: None) -> RunCli:
    """Invoke ``fintegrate`` with arguments; stdout and stderr stay separate."""

    def invoke(*args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(app, list(args), input=input, catch_exceptions=False)

    return invoke


@pytest.fixture
def service_env(clean_env: None, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """FINTEGRATE_* variables pointing the CLI at this worker's database, vhost and Redis."""
    for name in ("database_url", "rabbitmq_url", "rabbitmq_management_url", "redis_url"):
        value = settings.flat_value(name)
        if value:
            monkeypatch.setenv(f"FINTEGRATE_{name.upper()}", value)
    monkeypatch.setenv("FINTEGRATE_ENVIRONMENT", "test")
    return settings


@pytest.fixture
def api_env(service_env: Settings, live_server: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """``service_env`` plus the live API's URL and the operator key in the environment."""
    assert service_env.auth.admin_api_key
    monkeypatch.setenv("FINTEGRATE_API_URL", live_server)
    monkeypatch.setenv("FINTEGRATE_ADMIN_API_KEY", service_env.auth.admin_api_key)
    return service_env


@pytest.fixture
def tenant(run_cli: RunCli, api_env: Settings) -> dict[str, str]:
    """A consumer created through ``fintegrate consumer create --json`` (api_key included)."""
    result = run_cli("consumer", "create", unique_name("cli"), "-d", "made by a test", "--json")
    created: dict[str, str] = json_of(result)
    assert "shown only once" in result.stderr
    return created


def json_of(result: Result) -> Any:
    """The JSON document on stdout of a successful run."""
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def one_error_line(result: Result) -> str:
    """The single ``Error: ...`` line on stderr (asserts there is exactly one line)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]
