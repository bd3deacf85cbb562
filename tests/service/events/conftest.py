"""Each history test owns a freshly migrated database: the tests drop and create partitions."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine

from tests.support.history import history_database


@pytest.fixture
def history_engine(database_factory: Callable[[], str]) -> Iterator[Engine]:
    engine = history_database(database_factory)
    yield engine
    engine.dispose()
