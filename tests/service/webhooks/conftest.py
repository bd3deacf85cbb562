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
from sqlalchemy import Engine

from service.config import Settings
from service.webhooks.delivery.process import WebhookDeliverer
from tests.support.receiver import Receiver, Responder, always_ok
from tests.support.services import engine_on
from tests.support.webhooks import WEBHOOK_SETTINGS, nothing_left


@pytest.fixture(scope="package")
def webhook_database_url(migrated_database_factory: Callable[[], str]) -> str:
    """A migrated database for the webhook tests only."""
    return migrated_database_factory()


@pytest.fixture(scope="package")
def engine(webhook_database_url: str) -> Iterator[Engine]:
    """An engine on the webhook tests' own database."""
    own = engine_on(webhook_database_url)
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
