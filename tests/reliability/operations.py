"""Every API operation as a concrete request, grouped by who may call it.

``OPERATIONS`` lists one request per operation of /openapi.json, in an order that keeps
the tenant's objects alive until the end (deletions, revocation and rotation last).
``test_every_operation_is_in_the_catalogue`` keeps this list and the API in step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from fastapi.testclient import TestClient

PUBLIC, TENANT, EITHER, ADMIN = "public", "tenant", "tenant or admin", "admin"


@dataclass(frozen=True)
class Operation:
    """One API operation: who may call it, and a request that succeeds for that caller."""

    method: str
    path: str
    audience: str
    body: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return f"{self.method} {self.path.partition('?')[0]}"  # a query string is not the path

    def call(self, client: TestClient, ids: dict[str, str], headers: dict[str, str]) -> Any:
        """Send the request with ``ids`` filled into the path and into the body's values."""
        body = fill(self.body or {}, ids)
        url = self.path.format(**ids)
        response: httpx.Response = client.request(
            self.method, url, json=body if self.body is not None else None, headers=headers
        )
        return response


def fill(value: Any, ids: dict[str, str]) -> Any:
    """``value`` with ``ids`` filled into its strings, at any depth."""
    if isinstance(value, str):
        return value.format(**ids)
    if isinstance(value, list):
        return [fill(element, ids) for element in value]
    if isinstance(value, dict):
        return {key: fill(element, ids) for key, element in value.items()}
    return value


OPERATIONS = [
    Operation("GET", "/health", PUBLIC),
    Operation("GET", "/ready", PUBLIC),
    Operation("GET", "/metrics", PUBLIC),
    Operation("POST", "/customer/data", TENANT, {"name": "Ada"}),
    Operation("GET", "/customer/data", TENANT),
    Operation("GET", "/customer/data/{customer_id}", TENANT),
    Operation("PATCH", "/customer/data/{customer_id}/status", TENANT, {"status": "suspended"}),
    Operation("PUT", "/customer/data/{customer_id}/tags", TENANT, {"tags": {"tier": "gold"}}),
    Operation("GET", "/customer/data/{customer_id}/tags", TENANT),
    Operation("DELETE", "/customer/data/{customer_id}/tags/{key}", TENANT),
    Operation("POST", "/customer/data/{customer_id}/analytics", TENANT, {"metrics": {"x": 1}}),
    Operation("GET", "/customer/data/{customer_id}/analytics", TENANT),
    Operation("GET", "/events", TENANT),
    Operation("GET", "/events/{event_id}", TENANT),
    Operation(
        "POST", "/events/confirm-delivery", TENANT, {"event_id": "{event_id}", "status": "received"}
    ),
    Operation(
        "POST",
        "/events/confirm-deliveries",
        TENANT,
        {"receipts": [{"event_id": "{event_id}", "status": "processed"}]},
    ),
    Operation("GET", "/events/last-delivered", TENANT),
    Operation("GET", "/events/after-sequence?after_sequence=0", TENANT),
    Operation("GET", "/events/lost?older_than_ms=86400000", TENANT),
    Operation(
        "POST", "/events/last-delivered", TENANT, {"customer_ids": [], "include_consumer": True}
    ),
    Operation("POST", "/webhooks/endpoints", TENANT, {"url": "https://127.0.0.1:9/hook"}),
    Operation("GET", "/webhooks/endpoints", TENANT),
    Operation("GET", "/webhooks/endpoints/{endpoint_id}", TENANT),
    Operation("PATCH", "/webhooks/endpoints/{endpoint_id}", TENANT, {"description": "audited"}),
    Operation("POST", "/webhooks/endpoints/{endpoint_id}/rotate-secret", TENANT),
    Operation("GET", "/webhooks/endpoints/{endpoint_id}/attempts", TENANT),
    Operation(
        "POST",
        "/webhooks/endpoints/{endpoint_id}/recover",
        TENANT,
        {"since": "2026-01-01T00:00:00Z"},
    ),
    Operation("DELETE", "/webhooks/endpoints/{endpoint_id}", TENANT),
    Operation("DELETE", "/customer/data/{customer_id}", TENANT),
    Operation("GET", "/consumer/me", TENANT),
    Operation("POST", "/customer/data/{customer_id}/erase", TENANT),
    Operation("GET", "/consumer/data", EITHER),
    Operation("POST", "/events/resend", EITHER, {"dry_run": True}),
    Operation("POST", "/events/redeliver", EITHER, {"dry_run": True}),
    Operation("POST", "/consumer/data", ADMIN, {"name": "{new_name}"}),
    Operation("GET", "/consumer/data/{consumer_id}", ADMIN),
    Operation("PATCH", "/consumer/data/{consumer_id}", ADMIN, {"description": "audited"}),
    Operation("GET", "/consumer/data/{consumer_id}/keys", ADMIN),
    Operation("POST", "/consumer/data/{consumer_id}/broker-credentials/rotate", ADMIN),
    Operation("POST", "/consumer/data/{consumer_id}/keys/{key_id}/revoke", ADMIN),
    Operation("POST", "/consumer/data/{consumer_id}/keys/rotate", EITHER),
]
GUARDED = [operation for operation in OPERATIONS if operation.audience != PUBLIC]


def openapi_operations(schema: dict[str, Any]) -> set[str]:
    """``METHOD /path`` of every operation the schema declares."""
    return {f"{method.upper()} {path}" for path, ops in schema["paths"].items() for method in ops}
