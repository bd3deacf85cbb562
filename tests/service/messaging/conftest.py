"""Fixtures of the messaging tests: a fresh migrated database per test, provisioned tenants."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine, create_engine

from service.config import Settings
from service.kit.db import create_db_engine
from service.messaging.operate.provisioning import ProvisionResult, provision_consumer_queues
from service.migrations import runner as migrations
from tests.support.outbox import insert_consumer, new_consumer_name


@pytest.fixture
def outbox_settings(settings: Settings, database_factory: Callable[[], str]) -> Settings:
    """``settings`` on a database of its own, so no other test's pending events interfere."""
    url = database_factory()
    bootstrap = create_engine(url)
    migrations.apply(bootstrap)
    bootstrap.dispose()
    return settings.updated({"database_url": url, "relay_max_backoff_seconds": 2.0})


@pytest.fixture
def outbox_engine(outbox_settings: Settings) -> Iterator[Engine]:
    engine = create_db_engine(outbox_settings.database, pool_size=4)
    yield engine
    engine.dispose()


@pytest.fixture
def tenant(outbox_settings: Settings, outbox_engine: Engine) -> tuple[str, str, ProvisionResult]:
    """A consumer row with provisioned queues: (name, consumer_id, provision result)."""
    name = new_consumer_name()
    consumer_id = insert_consumer(outbox_engine, name)
    return name, consumer_id, provision_consumer_queues(outbox_settings, name)
