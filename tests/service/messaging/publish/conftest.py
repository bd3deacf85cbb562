"""Fixtures of the relay tests: tenants as rows with provisioned queues, no API."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from service.config import Settings
from service.messaging.operate.provisioning import provision_consumer_queues
from tests.support.outbox import ProvisionedTenant, insert_consumer, new_consumer_name


@pytest.fixture
def tenant(outbox_settings: Settings, outbox_engine: Engine) -> ProvisionedTenant:
    """A consumer row with provisioned queues: (name, consumer_id, provision result).

    Overrides the shared ``tenant``: the relay tests run no API, and their tenant lives on
    the test's own database (``outbox_settings``).
    """
    name = new_consumer_name()
    consumer_id = insert_consumer(outbox_engine, name)
    return name, consumer_id, provision_consumer_queues(outbox_settings, name)
