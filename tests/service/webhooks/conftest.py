"""Webhook test fixtures: settings that allow loopback http receivers, receivers, a deliverer.

Receivers are plain-http servers on 127.0.0.1 (SPEC 8 allows http:// only in development,
and loopback only inside FINTEGRATE_WEBHOOK_ALLOWED_CIDRS): nothing leaves the machine.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine

from service.config import Settings
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


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update=WEBHOOK_SETTINGS)


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
    """Runs one ``drain`` of a deliverer with ``settings`` (plus overrides)."""

    def run(**overrides: object) -> WebhookDeliverer:
        deliverer = WebhookDeliverer(
            settings.model_copy(update=overrides), engine, threading.Event()
        )
        try:
            deliverer.drain(deadline_seconds=30)
        finally:
            deliverer.close()
        return deliverer

    return run
