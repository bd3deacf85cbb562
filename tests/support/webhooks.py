"""Helpers of the webhook tests: the settings that allow loopback receivers, endpoints and
customers made through the API, and whether any delivery is left."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from sqlalchemy import Engine, text

from tests.support.api import assert_envelope
from tests.support.receiver import Receiver

ENDPOINTS_PATH = "/webhooks/endpoints"
WEBHOOK_SETTINGS = {
    "environment": "development",
    "webhook_encryption_key": "tests-webhook-encryption-key-0123456789",
    "webhook_allowed_cidrs": "127.0.0.0/8",
    "webhook_retry_schedule": "0.2,0.2,0.2",
    "webhook_timeout_seconds": 5.0,
    "webhook_poll_seconds": 0.1,
    "webhook_breaker_pause_seconds": 1.0,
}

PENDING_ON_ENABLED = """
    SELECT count(*) FROM webhook_deliveries d
    JOIN webhook_endpoints w ON w.endpoint_id = d.endpoint_id
    WHERE d.status = 'pending' AND w.status = 'enabled'
"""


def nothing_left(engine: Engine) -> Callable[[], bool]:
    """True once no delivery is pending on an enabled endpoint."""

    def check() -> bool:
        with engine.connect() as connection:
            left = connection.execute(text(PENDING_ON_ENABLED)).scalar_one()
        return bool(left == 0)

    return check


def endpoint_for(
    client: httpx.Client, tenant: dict[str, Any], receiver: Receiver, **body: Any
) -> dict[str, Any]:
    """A webhook endpoint of the tenant delivering to ``receiver``; the 201's data."""
    data: dict[str, Any] = assert_envelope(
        client.post(ENDPOINTS_PATH, json={"url": receiver.url, **body}, headers=tenant["headers"]),
        201,
    )
    return data


def customers_with_events(
    client: httpx.Client, tenant: dict[str, Any], customers: int, changes: int
) -> dict[str, list[int]]:
    """``customers`` customers, each created then changed ``changes`` times (status flips)."""
    made: dict[str, list[int]] = {}
    for index in range(customers):
        created = client.post(
            "/customer/data", json={"name": f"c{index}"}, headers=tenant["headers"]
        )
        customer_id = created.json()["data"]["customer_id"]
        made[customer_id] = [1]
        for change in range(changes):
            status = "inactive" if change % 2 == 0 else "active"
            answer = client.patch(
                f"/customer/data/{customer_id}/status",
                json={"status": status},
                headers=tenant["headers"],
            )
            assert answer.status_code == 200
            made[customer_id].append(change + 2)
    return made
