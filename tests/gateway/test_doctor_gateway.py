"""`fintegrate doctor` checks the gateway: in front of the API, and how many instances are up."""

from __future__ import annotations

import json
import os
import tempfile
import time

import pytest
from typer.testing import CliRunner

from fintegrate_cli.main import app
from service.config import Settings
from tests.gateway.processes import ApiInstance, GatewayFactory, InstanceFactory
from tests.support.ports import free_port
from tests.support.processes import process_environment


def doctor_gateway(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> dict[str, str]:
    """The gateway line of `fintegrate --json doctor` run with exactly ``settings``."""
    monkeypatch.chdir(tempfile.gettempdir())  # no .env file
    for key in [key for key in os.environ if key.startswith("FINTEGRATE_")]:
        monkeypatch.delenv(key)
    for key, value in process_environment(settings).items():
        if key.startswith("FINTEGRATE_"):
            monkeypatch.setenv(key, value)
    result = CliRunner().invoke(app, ["doctor", "--json"], catch_exceptions=False)
    checks = {check["name"]: check for check in json.loads(result.stdout)}
    gateway: dict[str, str] = checks["gateway"]
    return gateway


def through(settings: Settings, url: str, **update: object) -> Settings:
    return settings.updated({"api_url": url, **update})


def test_doctor_sees_a_dead_instance_behind_the_gateway(
    monkeypatch: pytest.MonkeyPatch,
    stack_settings: Settings,
    gateway_factory: GatewayFactory,
    instance_factory: InstanceFactory,
) -> None:
    live: ApiInstance = instance_factory()
    dead = f"http://127.0.0.1:{free_port()}"
    plain = gateway_factory([live.url, dead])
    check = doctor_gateway(monkeypatch, through(stack_settings, plain.url))
    assert check["status"] == "ok" and "in front of" in check["detail"], check

    dashboard = free_port()
    watched = gateway_factory(
        [live.url, dead], dashboard_port=dashboard, gateway_health_interval_seconds=0.3
    )
    time.sleep(1.5)  # a few health intervals
    check = doctor_gateway(
        monkeypatch, through(stack_settings, watched.url, gateway_dashboard_port=dashboard)
    )
    assert check["status"] == "warn"
    assert check["detail"] == f"1/2 API instance(s) up; down: {dead}"
    assert "fintegrate serve" in check["hint"]


def test_doctor_warns_when_the_gateway_address_is_an_api_instance(
    monkeypatch: pytest.MonkeyPatch, stack_settings: Settings, instances: list[ApiInstance]
) -> None:
    direct = through(stack_settings, instances[0].url, gateway_port=instances[0].port)
    check = doctor_gateway(monkeypatch, direct)
    assert check["status"] == "warn"
    assert "without the gateway" in check["detail"]
    assert "fintegrate gateway" in check["hint"]
    not_expected = doctor_gateway(monkeypatch, through(stack_settings, instances[0].url))
    assert not_expected["status"] == "ok" and "not in use" in not_expected["detail"]
