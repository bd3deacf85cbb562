"""Fixtures of the gateway tests: the real Traefik binary in front of real API instances."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.config import Settings, load_settings
from service.gateway.runner import Gateway, GatewayOptions
from tests.gateway.processes import ApiInstance, GatewayFactory, InstanceFactory
from tests.support.ports import free_port
from tests.support.services import REDIS_BASE_URL, worker_index


@pytest.fixture(scope="module")
def stack_settings(
    migrated_database_url: str, rabbit_vhost: str, request: pytest.FixtureRequest
) -> Settings:
    """Test settings for API instances behind a gateway on loopback (which they trust).

    No ``.env`` file is read: a developer's (scripts/run.sh writes one) must not leak in.
    """
    return load_settings(
        read_env_file=False,
        environment="test",
        database_url=migrated_database_url,
        rabbitmq_url=rabbit_vhost,
        redis_url=f"{REDIS_BASE_URL}/{1 + worker_index(request.config) % 15}",
        admin_api_key=f"admin-{uuid.uuid4().hex}",
        bcrypt_rounds=4,
        redis_timeout_seconds=0.5,
        trusted_proxy_ips="127.0.0.1",
        gateway_rate_limit_per_minute=100_000,
        gateway_rate_limit_burst=100_000,
        gateway_health_interval_seconds=1.0,
        gateway_health_timeout_seconds=0.5,
    )


@pytest.fixture(scope="module")
def instance_factory(
    stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InstanceFactory]:
    """Starts API instances (`fintegrate serve` processes); stops them after the module."""
    started: list[ApiInstance] = []

    def create(**overrides: Any) -> ApiInstance:
        log = tmp_path_factory.mktemp("api") / "api.log"
        instance = ApiInstance(stack_settings.updated(overrides), log).start()
        started.append(instance)
        return instance

    yield create
    for instance in started:
        instance.stop()


@pytest.fixture(scope="module")
def instances(instance_factory: InstanceFactory) -> list[ApiInstance]:
    """Two API instances shared by the module's tests (never killed)."""
    return [instance_factory(), instance_factory()]


@pytest.fixture
def gateway_factory(stack_settings: Settings) -> Iterator[GatewayFactory]:
    """Starts `Gateway`s on free ports in front of the given upstream URLs."""
    started: list[Gateway] = []

    def create(
        upstreams: list[str], dashboard_port: int | None = None, **overrides: Any
    ) -> Gateway:
        options = GatewayOptions(
            "127.0.0.1", free_port(), tuple(upstreams), dashboard_port=dashboard_port
        )
        gateway = Gateway(stack_settings.updated(overrides).gateway, options).start()
        started.append(gateway)
        return gateway

    yield create
    for gateway in started:
        gateway.stop()


@pytest.fixture
def gateway(gateway_factory: GatewayFactory, instances: list[ApiInstance]) -> Gateway:
    """A gateway with a budget too large to matter in front of the two shared instances."""
    return gateway_factory([instance.url for instance in instances])


def log_lines(path: Path, needle: str) -> list[str]:
    return [line for line in path.read_text().splitlines() if needle in line]
