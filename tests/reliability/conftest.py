"""Fixtures of the reliability tests: an isolated stack.

``isolated_settings`` gives a test its own freshly migrated database (the shared per-worker
one is left alone, since fault and fuzz runs write a lot and admin calls see every tenant).
The stack on it: ``stack_settings`` (a module overrides it to change fields, e.g. a smaller
relay batch or a broker behind a proxy), ``stack_engine``, ``api_url`` (a live API) and
``tenant`` (a consumer created through it). ``db_proxy`` and ``db_proxied_settings`` put
the worker's database behind a fault-injecting proxy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from service.app import create_app
from service.config import Settings
from service.kit.db import create_db_engine
from tests.support.api import assert_envelope, create_tenant_over_http
from tests.support.live_server import LiveServer
from tests.support.names import module_prefix, unique_name
from tests.support.tcp_proxy import TcpProxy


@pytest.fixture
def isolated_settings(settings: Settings, migrated_database_factory: Callable[[], str]) -> Settings:
    """``settings`` on a database of its own with every migration applied."""
    return settings.updated({"database_url": migrated_database_factory()})


@pytest.fixture
def stack_settings(isolated_settings: Settings) -> Settings:
    """The settings of the test's API, relays and workers; override it in a module to change
    fields (each override starts from ``isolated_settings``)."""
    return isolated_settings


@pytest.fixture
def stack_engine(stack_settings: Settings) -> Iterator[Engine]:
    """An engine on the stack's database, for probes and inserted backlogs."""
    engine = create_db_engine(stack_settings.database, pool_size=2)
    yield engine
    engine.dispose()


@pytest.fixture
def api_url(stack_settings: Settings) -> Iterator[str]:
    """The API on ``stack_settings``, served by uvicorn in this process; its base URL."""
    server = LiveServer(create_app(stack_settings)).start()
    yield server.url
    server.stop()


@pytest.fixture
def tenant(
    api_url: str, stack_settings: Settings, request: pytest.FixtureRequest
) -> dict[str, Any]:
    """A consumer created through ``api_url`` (queues provisioned), named after the module.

    Overrides the shared ``tenant``: the stack has a database of its own, so its tenants are
    made through its API, not through ``client`` on the worker's database.
    """
    return create_tenant_over_http(
        api_url, stack_settings.auth.admin_api_key, module_prefix(request)
    )


@pytest.fixture
def db_proxy(tcp_proxy_factory: Callable[[str, int], TcpProxy]) -> TcpProxy:
    """A fault-injecting proxy in front of PostgreSQL."""
    return tcp_proxy_factory("127.0.0.1", 5432)


@pytest.fixture
def db_proxied_settings(settings: Settings, db_proxy: TcpProxy) -> Settings:
    """``settings`` with the database reached through ``db_proxy``."""
    return settings.updated({"database_url": db_proxy.url_for(settings.database.url)})


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Webhooks configured (a sealing key, loopback allowed) so the victim can have an endpoint."""
    return settings.updated(
        {
            "webhook_encryption_key": "reliability-tests-webhook-key-0123456789",
            "webhook_allowed_cidrs": "127.0.0.0/8",
        }
    )


@pytest.fixture
def victim(
    client: TestClient, create_consumer: Callable[..., Any], engine: Engine
) -> dict[str, Any]:
    """A tenant with a tagged customer and its event; ``ids`` fill every path template."""
    tenant = create_consumer()
    created = client.post("/customer/data", json={"name": "Victim"}, headers=tenant["headers"])
    customer_id = assert_envelope(created, 201)["customer_id"]
    client.put(
        f"/customer/data/{customer_id}/tags",
        json={"tags": {"tier": "x"}},
        headers=tenant["headers"],
    )
    with engine.connect() as connection:
        event_id = connection.execute(
            text("SELECT event_id FROM customer_events WHERE customer_id = :id"),
            {"id": customer_id},
        ).scalar_one()
    endpoint = client.post(
        "/webhooks/endpoints", json={"url": "https://127.0.0.1:9/hook"}, headers=tenant["headers"]
    )
    ids = {
        "endpoint_id": assert_envelope(endpoint, 201)["endpoint_id"],
        "consumer_id": tenant["consumer_id"],
        "customer_id": customer_id,
        "event_id": str(event_id),
        "key_id": tenant["key_id"],
        "key": "tier",
        "new_name": unique_name("new"),
    }
    return {**tenant, "ids": ids}
