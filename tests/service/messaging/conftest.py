"""Fixtures of the messaging tests: a fresh migrated database per test, tenants on the live API."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine

from service.config import Settings
from service.kit.db import create_db_engine
from tests.support.api import create_tenant_over_http
from tests.support.names import module_prefix
from tests.support.worker import Tenant


@pytest.fixture
def outbox_settings(settings: Settings, migrated_database_factory: Callable[[], str]) -> Settings:
    """``settings`` on a database of its own, so no other test's pending events interfere."""
    url = migrated_database_factory()
    return settings.updated({"database_url": url, "relay_max_backoff_seconds": 2.0})


@pytest.fixture
def outbox_engine(outbox_settings: Settings) -> Iterator[Engine]:
    engine = create_db_engine(outbox_settings.database, pool_size=4)
    yield engine
    engine.dispose()


@pytest.fixture
def tenant(live_server: str, settings: Settings, request: pytest.FixtureRequest) -> Tenant:
    """A consumer made through the live API, named after the test module.

    Overrides the shared ``tenant``: the workers under test call ``live_server`` back, so
    the tenant is made there instead of through a second app in a TestClient.
    """
    return create_tenant_over_http(live_server, settings.auth.admin_api_key, module_prefix(request))
