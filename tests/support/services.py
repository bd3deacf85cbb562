"""Where the shared services of the tests are (environment overrides) and which share of
them a pytest worker uses."""

from __future__ import annotations

import os

import pytest
from sqlalchemy import Engine

from service.config import DatabaseSettings, shipped_driver_url
from service.kit.db import create_db_engine

PG_ADMIN_URL = shipped_driver_url(
    os.environ.get(
        "FINTEGRATE_TEST_PG_URL",
        "postgresql://fintegrate_user:fintegrate_pass@127.0.0.1:5432/postgres",
    )
)
RABBIT_HOST = os.environ.get("FINTEGRATE_TEST_RABBIT_HOST", "127.0.0.1")
RABBIT_USER = os.environ.get("FINTEGRATE_TEST_RABBIT_USER", "fintegrate_user")
RABBIT_PASS = os.environ.get("FINTEGRATE_TEST_RABBIT_PASS", "fintegrate_pass")
RABBIT_MANAGEMENT = f"http://{RABBIT_HOST}:15672"
REDIS_BASE_URL = os.environ.get("FINTEGRATE_TEST_REDIS_URL", "redis://127.0.0.1:6379")
HELP = "run scripts/prepare_services.sh first"


def worker_index(config: pytest.Config) -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(worker.removeprefix("gw") or 0)


def engine_on(database_url: str) -> Engine:
    """An engine on ``database_url`` built as the app builds it, with a small pool."""
    return create_db_engine(DatabaseSettings(url=database_url), pool_size=4)
