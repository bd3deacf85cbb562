"""`fintegrate demo` with the webhook channel: its loopback endpoint gets every event, signed."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from service.config import Settings
from service.kit.db import create_db_engine
from service.webhooks.delivery.process import WebhookDeliverer
from tests.support.cli import RunCli, json_of_partial
from tests.support.webhooks import WEBHOOK_SETTINGS


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.updated(WEBHOOK_SETTINGS)


@pytest.fixture
def deliverer(api_env: Settings) -> Iterator[None]:
    """`fintegrate webhooks deliver` in a thread on this worker's database."""
    engine = create_db_engine(api_env.database, pool_size=4)
    stop = threading.Event()
    process = WebhookDeliverer.from_settings(api_env, engine, stop)
    thread = threading.Thread(target=process.run, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(30)
    process.close()
    engine.dispose()


@pytest.mark.usefixtures("relay", "deliverer")
def test_the_demo_endpoint_receives_every_event_signed(run_cli: RunCli, api_env: Settings) -> None:
    result = run_cli("demo", "--customers", "2", "--timeout", "60", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json_of_partial(result)
    assert summary["events"] == summary["delivered"] == 4
    # every event after the endpoint was made: 2 creations and the status change
    assert summary["received_by_webhook"] == 3
    assert summary["webhook_signatures_verified"] == 3
