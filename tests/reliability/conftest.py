"""Fixtures of the reliability tests: the API fixtures of tests/service and an isolated stack.

``isolated_settings`` gives a test its own freshly migrated database (the shared per-worker
one is left alone, since fault and fuzz runs write a lot and admin calls see every tenant).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import create_engine

from service import migrations
from service.config import Settings
from tests.service.conftest import (  # noqa: F401  (fixtures shared with the API tests)
    admin_headers,
    app,
    client,
    create_consumer,
    create_customer,
)


@pytest.fixture
def isolated_settings(settings: Settings, database_factory: Callable[[], str]) -> Settings:
    """``settings`` on a database of its own with every migration applied."""
    url = database_factory()
    bootstrap = create_engine(url)
    migrations.apply(bootstrap)
    bootstrap.dispose()
    return settings.model_copy(update={"database_url": url})
