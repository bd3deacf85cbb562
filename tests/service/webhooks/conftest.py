"""Webhook test fixtures: settings that allow loopback http receivers, receivers, a deliverer.

Receivers are plain-http servers on 127.0.0.1 (SPEC 8 allows http:// only in development,
and loopback only inside FINTEGRATE_WEBHOOK_ALLOWED_CIDRS): nothing leaves the machine.
These tests get a database of their own: a deliverer claims every pending delivery of its
database, and the worker's shared one holds endpoints other tests made (Schemathesis' fuzzed
URLs, secrets sealed with other keys), which must never be sent to.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine, create_engine, text

from service.config import DatabaseSettings, Settings
from service.kit.db import create_db_engine
from service.migrations import runner as migrations
from service.webhooks.delivery.process import WebhookDeliverer
from tests.support.receiver import Receiver, Responder, always_ok

WEBHOOK_SETTINGS = {
    "environment": "development",
    "webhook_encryption_key": "tests-webhook-encryption-key-0123456789",
    "webhook_allowed_cidrs": "127.0.0.0/8",
    "webhook_retry_schedule": "0.2,0.2,0.2",
    "webhook_timeout_seconds": 5.0,
    "webhook_poll_seconds": 0.1,
    "webhook_breaker_pause_seconds": 1.0,
}


@pytest.fixture(scope="package")
def webhook_database_url(database_factory: Callable[[], str]) -> str:
    """A migrated database for the webhook tests only."""
    url = database_factory()
    migrating = create_engine(url)
    migrations.apply(migrating)
    migrating.dispose()
    return url


@pytest.fixture(scope="package")
def engine(webhook_database_url: str) -> Iterator[Engine]:
    """An engine on the webhook tests' own database."""
    own = create_db_engine(DatabaseSettings(url=webhook_database_url), pool_size=4)
    yield own
    own.dispose()


@pytest.fixture
def settings(settings: Settings, webhook_database_url: str) -> Settings:
    return settings.updated({**WEBHOOK_SETTINGS, "database_url": webhook_database_url})


@pytest.fixture
def receiver_factory() -> Iterator[Callable[..., Receiver]]:
    """Starts loopback receivers (``responder`` decides each answer); stops them after."""
    started: list[Receiver] = []

    def create(responder: Responder = always_ok) -> Receiver:
        receiver = Receiver(responder).start()
        started.append(receiver)
        return receiver

    yield create
    for receiver in started:
        receiver.stop()


def nothing_left(engine: Engine) -> Callable[[], bool]:
    """True once no delivery is pending on an enabled endpoint."""

    def check() -> bool:
        with engine.connect() as connection:
            left = connection.execute(text(PENDING_ON_ENABLED)).scalar_one()
        return bool(left == 0)

    return check


PENDING_ON_ENABLED = """
    SELECT count(*) FROM webhook_deliveries d
    JOIN webhook_endpoints w ON w.endpoint_id = d.endpoint_id
    WHERE d.status = 'pending' AND w.status = 'enabled'
"""


@pytest.fixture
def deliver(settings: Settings, engine: Engine) -> Callable[..., WebhookDeliverer]:
    """Runs a deliverer (``settings`` plus overrides) in a thread until ``until()`` holds
    (default: nothing pending on an enabled endpoint), at most ``timeout`` seconds."""

    def run(
        until: Callable[[], bool] | None = None, timeout: float = 60.0, **overrides: object
    ) -> WebhookDeliverer:
        done = until or nothing_left(engine)
        stop = threading.Event()
        deliverer = WebhookDeliverer.from_settings(settings.updated(overrides), engine, stop)
        worker = threading.Thread(target=deliverer.run, daemon=True)
        worker.start()
        deadline = time.monotonic() + timeout
        try:
            while not done():
                assert time.monotonic() < deadline, "deliveries not done in time"
                time.sleep(0.1)
        finally:
            stop.set()
            worker.join(timeout=30)
            deliverer.close()
        return deliverer

    return run
