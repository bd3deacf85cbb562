"""The credential matrix: every operation of the API against every kind of credential.

Each row is one credential (none, malformed, revoked, rotated out, disabled tenant, admin
and tenant keys swapped between headers, wrong admin key, the valid keys); each cell is
an operation of /openapi.json called on the victim tenant's own objects. Refusals must be
the documented status in an envelope and change nothing; the valid keys must succeed
exactly where they are allowed. Complements tests/service/test_api_auth.py (each rule on
one endpoint) and test_api_isolation.py (foreign ids), which cover the same rules in depth.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from service.config import Settings
from tests.reliability.operations import (
    ADMIN,
    EITHER,
    GUARDED,
    OPERATIONS,
    TENANT,
    openapi_operations,
)
from tests.support.api import TENANT_ENDPOINTS, assert_envelope, tenant_row_counts

OK = "2xx"
# credential -> expected answer per audience (tenant-only, tenant-or-admin, admin-only)
EXPECTED: dict[str, dict[str, int | str]] = {
    "no credentials": {TENANT: 401, EITHER: 401, ADMIN: 401},
    "malformed tenant key": {TENANT: 401, EITHER: 401, ADMIN: 401},
    "revoked tenant key": {TENANT: 401, EITHER: 401, ADMIN: 401},
    "rotated-out tenant key": {TENANT: 401, EITHER: 401, ADMIN: 401},
    "disabled tenant's key": {TENANT: 403, EITHER: 403, ADMIN: 403},
    "admin key sent as X-API-Key": {TENANT: 401, EITHER: 401, ADMIN: 401},
    "tenant key sent as X-Admin-Key": {TENANT: 401, EITHER: 401, ADMIN: 401},
    "wrong admin key": {TENANT: 401, EITHER: 401, ADMIN: 401},
    # fail closed: one credential that fails verification refuses the request
    "admin key beside a wrong tenant key": {TENANT: 401, EITHER: 401, ADMIN: 401},
    "tenant key beside a wrong admin key": {TENANT: 401, EITHER: 401, ADMIN: 401},
    "admin key": {TENANT: 401, EITHER: OK, ADMIN: OK},
    "tenant key": {TENANT: OK, EITHER: OK, ADMIN: 403},
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """No failed-auth throttling: a row sends one bad key to every operation."""
    return settings.updated({"failed_auth_limit": 1_000_000})


def credential_headers(
    credential: str, victim: dict[str, Any], client: TestClient, admin: dict[str, str]
) -> dict[str, str]:
    """The headers of ``credential``, after putting the victim in the state it needs."""
    key, admin_key = victim["api_key"], admin["X-Admin-Key"]
    base = f"/consumer/data/{victim['consumer_id']}"
    if credential == "revoked tenant key":
        client.post(f"{base}/keys/{victim['key_id']}/revoke", headers=admin)
    elif credential == "rotated-out tenant key":
        client.post(f"{base}/keys/rotate", headers=admin)
    elif credential == "disabled tenant's key":
        client.patch(base, json={"status": "disabled"}, headers=admin)
    return {
        "no credentials": {},
        "malformed tenant key": {"X-API-Key": "fk_not-a-key"},
        "admin key sent as X-API-Key": {"X-API-Key": admin_key},
        "tenant key sent as X-Admin-Key": {"X-Admin-Key": key},
        "wrong admin key": {"X-Admin-Key": admin_key[::-1]},
        "admin key beside a wrong tenant key": {**admin, "X-API-Key": key[:-4] + "AAAA"},
        "tenant key beside a wrong admin key": {"X-API-Key": key, "X-Admin-Key": admin_key[::-1]},
        "admin key": admin,
    }.get(credential, {"X-API-Key": key})


def tenant_state(client: TestClient, engine: Engine, victim: dict[str, Any], admin: Any) -> Any:
    """Everything a refused request could have changed: tenant rows, consumer, keys."""
    base = f"/consumer/data/{victim['consumer_id']}"
    consumer = client.get(base, headers=admin).json()["data"]
    keys = client.get(f"{base}/keys", headers=admin).json()["data"]["items"]
    consumer.pop("updated_at")
    return tenant_row_counts(engine, victim["consumer_id"]), consumer, keys


def answered_as(response: Any, expected: int | str) -> bool:
    if expected == OK:
        return bool(response.is_success)
    return bool(response.status_code == expected)


def test_every_operation_is_in_the_catalogue(client: TestClient) -> None:
    assert {operation.name for operation in OPERATIONS} == openapi_operations(
        client.get("/openapi.json").json()
    )


def test_every_tenant_operation_taking_an_id_has_an_isolation_test() -> None:
    covered = {
        f"{method} {path.replace('/tags/tier', '/tags/{key}')}"
        for method, path, _ in TENANT_ENDPOINTS
    }
    covered.add("POST /events/confirm-delivery")  # tests/service/delivery: foreign = unknown
    covered.add("POST /events/confirm-deliveries")  # tests/service/delivery: foreign = unknown
    covered.add("POST /events/last-delivered")  # test_api_last_delivered: foreign = unknown
    covered |= {  # tests/service/webhooks/test_api_endpoints.py: foreign = missing
        operation.name for operation in GUARDED if "{endpoint_id}" in operation.path
    }
    with_ids = {
        operation.name
        for operation in GUARDED
        if operation.audience != ADMIN and ("{" in operation.path or operation.body)
    }
    creations = {"POST /customer/data", "POST /webhooks/endpoints"}
    assert with_ids - creations - {"POST /events/resend", "POST /events/redeliver"} <= covered


@pytest.mark.parametrize("credential", list(EXPECTED))
def test_each_credential_gets_exactly_its_documented_answer_everywhere(
    client: TestClient,
    engine: Engine,
    victim: dict[str, Any],
    admin_headers: dict[str, str],
    credential: str,
) -> None:
    headers = credential_headers(credential, victim, client, admin_headers)
    before = tenant_state(client, engine, victim, admin_headers)
    wrong = []
    for operation in GUARDED:
        expected = EXPECTED[credential][operation.audience]
        response = operation.call(client, victim["ids"], headers)
        if not answered_as(response, expected):
            wrong.append(f"{operation.name}: {response.status_code} {response.text[:120]}")
        elif expected != OK:
            assert_envelope(response, response.status_code)
    assert wrong == [], f"{credential} expected {EXPECTED[credential]}"
    if OK not in EXPECTED[credential].values():
        assert tenant_state(client, engine, victim, admin_headers) == before


def publish_row(engine: Engine, event_id: str) -> tuple[str, int]:
    with engine.connect() as connection:
        row = connection.execute(
            text(
                "SELECT publish_status, publish_try_count FROM customer_events WHERE event_id = :id"
            ),
            {"id": event_id},
        ).one()
    return row.publish_status, row.publish_try_count


@pytest.mark.parametrize("action", ["/events/resend", "/events/redeliver"])
def test_a_tenants_republish_never_touches_another_tenants_events(
    client: TestClient,
    engine: Engine,
    victim: dict[str, Any],
    create_consumer: Callable[..., Any],
    action: str,
) -> None:
    attacker = create_consumer()
    before = publish_row(engine, victim["ids"]["event_id"])

    preview = client.post(action, json={"dry_run": True}, headers=attacker["headers"])
    done = client.post(action, json={}, headers=attacker["headers"])

    assert victim["ids"]["event_id"] not in str(assert_envelope(preview, 200))
    assert assert_envelope(done, 200)["failed"] == 0
    assert publish_row(engine, victim["ids"]["event_id"]) == before == ("pending", 0)
