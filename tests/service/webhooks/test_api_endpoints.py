"""The endpoint API (SPEC 8): envelope, tenancy, validation, secrets once, audit rows."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from service.config import Settings
from service.webhooks.signing import SecretBox
from tests.support.api import assert_envelope, description

PATH = "/webhooks/endpoints"


def create(client: TestClient, consumer: dict[str, Any], **body: Any) -> dict[str, Any]:
    body.setdefault("url", "http://127.0.0.1:9/hook")
    data: dict[str, Any] = assert_envelope(
        client.post(PATH, json=body, headers=consumer["headers"]), 201
    )
    return data


def test_create_shows_the_secret_once_and_stores_it_sealed(
    client: TestClient, create_consumer: Callable[..., Any], engine: Engine, settings: Settings
) -> None:
    tenant = create_consumer()
    data = create(client, tenant, event_types=["customer_creation"], description="crm")
    assert data["status"] == "enabled" and data["event_types"] == ["customer_creation"]
    secret = data["secret"]
    assert secret.startswith("whsec_") and 24 <= len(base64.b64decode(secret[6:])) <= 64
    shown = assert_envelope(
        client.get(f"{PATH}/{data['endpoint_id']}", headers=tenant["headers"]), 200
    )
    assert "secret" not in shown and shown["url"] == "http://127.0.0.1:9/hook"
    with engine.connect() as connection:
        sealed = connection.execute(
            text("SELECT ciphertext FROM webhook_endpoint_secrets WHERE endpoint_id = :e"),
            {"e": data["endpoint_id"]},
        ).scalar_one()
    assert secret.encode() not in bytes(sealed)
    box = SecretBox(settings.webhooks.encryption_key, settings.environment)
    assert box.open(bytes(sealed), data["endpoint_id"]) == secret


def test_another_tenants_endpoint_is_a_404_like_a_missing_one(
    client: TestClient, create_consumer: Callable[..., Any]
) -> None:
    owner, stranger = create_consumer(), create_consumer()
    endpoint_id = create(client, owner)["endpoint_id"]
    missing = client.get(
        f"{PATH}/00000000-0000-4000-8000-000000000000", headers=stranger["headers"]
    )
    assert_envelope(missing, 404)
    for method, suffix, body in (
        ("GET", "", None),
        ("PATCH", "", {"description": "x"}),
        ("DELETE", "", None),
        ("POST", "/rotate-secret", None),
        ("GET", "/attempts", None),
        ("POST", "/recover", {"since": "2026-01-01T00:00:00Z"}),
    ):
        answer = client.request(
            method, f"{PATH}/{endpoint_id}{suffix}", json=body, headers=stranger["headers"]
        )
        assert_envelope(answer, 404)
        assert answer.json() == missing.json()
    listed = assert_envelope(client.get(PATH, headers=stranger["headers"]), 200)
    assert listed["items"] == []
    assert_envelope(client.get(f"{PATH}/{endpoint_id}", headers=owner["headers"]), 200)


def test_bad_input_is_a_clear_422_that_changes_nothing(
    client: TestClient, create_consumer: Callable[..., Any]
) -> None:
    tenant = create_consumer()
    for body in (
        {"url": "http://10.0.0.1/hook"},
        {"url": "http://169.254.169.254/latest"},
        {"url": "ftp://127.0.0.1/x"},
        {"url": "http://127.0.0.1/x", "event_types": ["customer.creation"]},
        {"url": "http://127.0.0.1/x", "extra": 1},
        {"event_types": ["customer_creation"]},
    ):
        answer = client.post(PATH, json=body, headers=tenant["headers"])
        assert_envelope(answer, 422)
    assert "private" in description(
        client.post(PATH, json={"url": "http://10.0.0.1/"}, headers=tenant["headers"])
    )
    assert assert_envelope(client.get(PATH, headers=tenant["headers"]), 200)["count"] == 0


def test_https_only_outside_development(
    client: TestClient, create_consumer: Callable[..., Any], app: Any, settings: Settings
) -> None:
    app.state.settings = settings.updated({"environment": "production"})
    tenant = create_consumer()
    answer = client.post(PATH, json={"url": "http://127.0.0.1:9/x"}, headers=tenant["headers"])
    assert_envelope(answer, 422)
    assert "https://" in description(answer)


def test_update_delete_and_audit(
    client: TestClient, create_consumer: Callable[..., Any], engine: Engine
) -> None:
    tenant = create_consumer()
    endpoint_id = create(client, tenant)["endpoint_id"]
    url = f"{PATH}/{endpoint_id}"
    patched = assert_envelope(
        client.patch(
            url,
            json={"status": "disabled", "event_types": ["customer_deletion"]},
            headers=tenant["headers"],
        ),
        200,
    )
    assert patched["status"] == "disabled" and patched["event_types"] == ["customer_deletion"]
    assert_envelope(client.patch(url, json={}, headers=tenant["headers"]), 422)
    assert_envelope(
        client.patch(url, json={"url": "http://10.1.1.1/"}, headers=tenant["headers"]), 422
    )
    deleted = assert_envelope(client.delete(url, headers=tenant["headers"]), 200)
    assert deleted["deleted"] is True
    assert_envelope(client.get(url, headers=tenant["headers"]), 404)
    assert_envelope(client.delete(url, headers=tenant["headers"]), 404)
    with engine.connect() as connection:
        actions = (
            connection.execute(
                text(
                    "SELECT action FROM audit_log WHERE consumer_id = :c AND action LIKE 'webhook%'"
                    " ORDER BY occurred_at"
                ),
                {"c": tenant["consumer_id"]},
            )
            .scalars()
            .all()
        )
    assert actions == [
        "webhook_endpoint_created",
        "webhook_endpoint_updated",
        "webhook_endpoint_deleted",
    ]


def test_rotate_secret_keeps_the_old_one_for_the_grace(
    client: TestClient, create_consumer: Callable[..., Any]
) -> None:
    tenant = create_consumer()
    created = create(client, tenant)
    rotated = assert_envelope(
        client.post(f"{PATH}/{created['endpoint_id']}/rotate-secret", headers=tenant["headers"]),
        200,
    )
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != created["secret"]
    assert rotated["previous_secret_expires_at"] is not None


def test_listing_pages_with_a_cursor(
    client: TestClient, create_consumer: Callable[..., Any]
) -> None:
    tenant = create_consumer()
    ids = [create(client, tenant)["endpoint_id"] for _ in range(3)]
    first = assert_envelope(client.get(PATH, params={"limit": 2}, headers=tenant["headers"]), 200)
    assert first["count"] == 2 and first["next_cursor"]
    rest = assert_envelope(
        client.get(
            PATH, params={"limit": 2, "cursor": first["next_cursor"]}, headers=tenant["headers"]
        ),
        200,
    )
    assert [item["endpoint_id"] for item in first["items"] + rest["items"]] == ids


def test_no_encryption_key_outside_development_is_a_503(
    client: TestClient, create_consumer: Callable[..., Any], app: Any, settings: Settings
) -> None:
    app.state.settings = settings.updated(
        {"environment": "production", "webhook_encryption_key": None}
    )
    tenant = create_consumer()
    answer = client.post(PATH, json={"url": "https://127.0.0.1/x"}, headers=tenant["headers"])
    assert_envelope(answer, 503)
    assert "FINTEGRATE_WEBHOOK_ENCRYPTION_KEY" in description(answer)
