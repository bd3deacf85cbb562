"""Fixtures of the reliability tests: the API fixtures of tests/service and an isolated stack.

``isolated_settings`` gives a test its own freshly migrated database (the shared per-worker
one is left alone, since fault and fuzz runs write a lot and admin calls see every tenant).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text

from service.config import Settings
from service.migrations import runner as migrations
from tests.conftest import unique_name
from tests.service import conftest as api_fixtures
from tests.support.api import assert_envelope

# The API fixtures of tests/service, shared: app, client, admin_headers, create_consumer.
app = api_fixtures.app
client = api_fixtures.client
admin_headers = api_fixtures.admin_headers
create_consumer = api_fixtures.create_consumer
create_customer = api_fixtures.create_customer


@pytest.fixture
def isolated_settings(settings: Settings, database_factory: Callable[[], str]) -> Settings:
    """``settings`` on a database of its own with every migration applied."""
    url = database_factory()
    bootstrap = create_engine(url)
    migrations.apply(bootstrap)
    bootstrap.dispose()
    return settings.model_copy(update={"database_url": url})


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
    ids = {
        "consumer_id": tenant["consumer_id"],
        "customer_id": customer_id,
        "event_id": str(event_id),
        "key_id": tenant["key_id"],
        "key": "tier",
        "new_name": unique_name("new"),
    }
    return {**tenant, "ids": ids}
