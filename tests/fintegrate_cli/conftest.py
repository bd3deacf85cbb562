"""Fixtures of the CLI tests: a clean environment, a runner on the real app, a tenant."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from typer.testing import CliRunner, Result

from fintegrate_cli.main import app
from service.config import Settings
from service.kit.db import create_db_engine
from tests.support.cli import RunCli, json_of
from tests.support.names import unique_name
from tests.support.outbox import relay_running


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
def relay(api_env: Settings) -> Iterator[None]:
    """An outbox relay publishing this worker's database in a thread, like `fintegrate relay`."""
    engine = create_db_engine(api_env.database, pool_size=2)
    with relay_running(api_env, engine) as outbox_relay:
        assert outbox_relay.idle.wait(30)  # joined, holds its partitions, caught up
        yield
    engine.dispose()


@pytest.fixture
def tenant(run_cli: RunCli, api_env: Settings) -> dict[str, str]:
    """A consumer created through ``fintegrate consumer create --json`` (api_key included).

    Overrides the shared ``tenant``: the CLI tests make their tenant the way an operator does.
    """
    result = run_cli("consumer", "create", unique_name("cli"), "-d", "made by a test", "--json")
    created: dict[str, str] = json_of(result)
    assert "shown only once" in result.stderr
    return created
