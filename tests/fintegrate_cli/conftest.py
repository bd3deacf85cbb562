"""CLI test helpers: a clean environment, a runner on the real app, a closed port."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import pytest
from typer.testing import CliRunner, Result

from fintegrate_cli.main import app
from service.config import Settings

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
        value = getattr(settings, name)
        if value:
            monkeypatch.setenv(f"FINTEGRATE_{name.upper()}", value)
    monkeypatch.setenv("FINTEGRATE_ENVIRONMENT", "test")
    return settings


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
