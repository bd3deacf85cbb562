"""Tenant and operator authentication: key format, bcrypt only when cold, refusals."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from service.app import create_app
from service.auth.keys import bcrypt_calls, generate_key, parse_key
from service.config import Settings
from tests.support.api import assert_envelope, description

Consumer = dict[str, Any]


def test_generated_keys_parse_and_mangled_keys_do_not() -> None:
    key = generate_key()
    assert key.full.startswith(f"fk_{key.prefix}_")
    assert len(key.prefix) == 12 and key.prefix.isalnum() and key.prefix.islower()
    assert parse_key(key.full) == key
    for mangled in (key.full + "!", key.full.upper(), "fk_short_secret", key.full[:-30], ""):
        assert parse_key(mangled) is None


def test_warm_requests_run_no_bcrypt(client: TestClient, create_consumer: Callable) -> None:
    consumer = create_consumer()
    assert_envelope(client.get("/customer/data", headers=consumer["headers"]), 200)
    before = bcrypt_calls()
    for _ in range(5):
        assert_envelope(client.get("/customer/data", headers=consumer["headers"]), 200)
    assert bcrypt_calls() == before


def test_cold_request_runs_bcrypt_once(
    client: TestClient, create_consumer: Callable, settings: Settings
) -> None:
    consumer = create_consumer()
    with TestClient(create_app(settings)) as cold_client:
        before = bcrypt_calls()
        for _ in range(3):
            assert_envelope(cold_client.get("/customer/data", headers=consumer["headers"]), 200)
        assert bcrypt_calls() == before + 1


def test_malformed_key_is_refused_before_database_or_bcrypt(settings: Settings) -> None:
    unreachable = settings.updated(
        {"database_url": "postgresql+psycopg2://nobody@127.0.0.1:1/none"}
    )
    with TestClient(create_app(unreachable)) as client:
        before = bcrypt_calls()
        response = client.get("/customer/data", headers={"X-API-Key": "fk_not-a-key"})
        assert_envelope(response, 401)
        assert "Malformed" in description(response)
        assert bcrypt_calls() == before


def test_wrong_secret_is_401(client: TestClient, create_consumer: Callable) -> None:
    consumer = create_consumer()
    prefix = consumer["key_prefix"]
    forged = f"fk_{prefix}_{'A' * 43}"
    assert_envelope(client.get("/customer/data", headers={"X-API-Key": forged}), 401)


def test_repeated_bad_secrets_throttle_the_prefix_but_never_the_right_key(
    settings: Settings, create_consumer: Callable
) -> None:
    consumer = create_consumer()
    forged = {"X-API-Key": f"fk_{consumer['key_prefix']}_{'B' * 43}"}
    strict = settings.updated({"failed_auth_limit": 3})
    with TestClient(create_app(strict)) as client:
        for _ in range(3):
            assert_envelope(client.get("/customer/data", headers=forged), 401)
        before = bcrypt_calls()
        assert_envelope(client.get("/customer/data", headers=forged), 429)
        assert bcrypt_calls() == before
        assert_envelope(client.get("/customer/data", headers=consumer["headers"]), 200)


def test_admin_endpoints_refuse_tenant_keys_and_wrong_admin_keys(
    client: TestClient, create_consumer: Callable
) -> None:
    consumer = create_consumer()
    assert_envelope(client.get("/consumer/data/" + consumer["consumer_id"]), 401)
    assert_envelope(
        client.get("/consumer/data/" + consumer["consumer_id"], headers=consumer["headers"]), 403
    )
    wrong = {"X-Admin-Key": "not-the-admin-key"}
    assert_envelope(client.get("/consumer/data/" + consumer["consumer_id"], headers=wrong), 401)


def test_tenant_endpoints_refuse_the_admin_key_alone(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    response = client.get("/customer/data", headers=admin_headers)
    assert_envelope(response, 401)
    assert "X-API-Key" in description(response)


def test_admin_api_is_off_without_a_configured_key(settings: Settings) -> None:
    without = settings.updated({"admin_api_key": None})
    with TestClient(create_app(without)) as client:
        response = client.post("/consumer/data", json={"name": "x"}, headers={"X-Admin-Key": "a"})
        assert_envelope(response, 403)
        assert "disabled" in description(response)


def test_disabled_consumer_is_refused_and_enabled_again(
    client: TestClient, create_consumer: Callable, admin_headers: dict[str, str]
) -> None:
    consumer = create_consumer()
    assert_envelope(client.get("/customer/data", headers=consumer["headers"]), 200)
    path = "/consumer/data/" + consumer["consumer_id"]
    assert_envelope(client.patch(path, json={"status": "disabled"}, headers=admin_headers), 200)
    refused = client.get("/customer/data", headers=consumer["headers"])
    assert_envelope(refused, 403)
    assert "disabled" in description(refused)
    assert_envelope(client.patch(path, json={"status": "active"}, headers=admin_headers), 200)
    assert_envelope(client.get("/customer/data", headers=consumer["headers"]), 200)


@pytest.mark.parametrize("by", ["admin", "tenant"])
def test_rotated_key_is_refused_at_once_and_the_new_one_works(
    client: TestClient, create_consumer: Callable, admin_headers: dict[str, str], by: str
) -> None:
    consumer = create_consumer()
    assert_envelope(client.get("/customer/data", headers=consumer["headers"]), 200)
    headers = admin_headers if by == "admin" else consumer["headers"]
    rotated = client.post(f"/consumer/data/{consumer['consumer_id']}/keys/rotate", headers=headers)
    new_key = assert_envelope(rotated, 201)["api_key"]
    assert_envelope(client.get("/customer/data", headers=consumer["headers"]), 401)
    assert_envelope(client.get("/customer/data", headers={"X-API-Key": new_key}), 200)


def test_rotation_on_another_instance_applies_after_the_cache_ttl(
    settings: Settings, create_consumer: Callable, client: TestClient
) -> None:
    """With FINTEGRATE_AUTH_CACHE_TTL_SECONDS=0 another instance refuses the old key at once."""
    consumer = create_consumer()
    uncached = settings.updated({"auth_cache_ttl_seconds": 0})
    with TestClient(create_app(uncached)) as other:
        assert_envelope(other.get("/customer/data", headers=consumer["headers"]), 200)
        path = f"/consumer/data/{consumer['consumer_id']}/keys/rotate"
        assert_envelope(client.post(path, headers=consumer["headers"]), 201)
        assert_envelope(other.get("/customer/data", headers=consumer["headers"]), 401)


def test_a_tenant_cannot_rotate_another_tenants_key(
    client: TestClient, create_consumer: Callable
) -> None:
    mine, theirs = create_consumer(), create_consumer()
    path = f"/consumer/data/{theirs['consumer_id']}/keys/rotate"
    assert_envelope(client.post(path, headers=mine["headers"]), 404)
    assert_envelope(client.get("/customer/data", headers=theirs["headers"]), 200)


def test_revoked_key_is_refused_and_keys_list_hides_hashes(
    client: TestClient, create_consumer: Callable, admin_headers: dict[str, str]
) -> None:
    consumer = create_consumer()
    assert_envelope(client.get("/customer/data", headers=consumer["headers"]), 200)
    base = f"/consumer/data/{consumer['consumer_id']}/keys"
    revoke = client.post(f"{base}/{consumer['key_id']}/revoke", headers=admin_headers)
    assert assert_envelope(revoke, 200)["is_active"] is False
    assert_envelope(client.get("/customer/data", headers=consumer["headers"]), 401)
    keys = assert_envelope(client.get(base, headers=admin_headers), 200)["items"]
    assert [key["key_id"] for key in keys] == [consumer["key_id"]]
    assert keys[0]["revoked_at"] is not None
    assert not any("hash" in field for field in keys[0])


def test_last_used_at_is_written_once_per_interval(
    client: TestClient, create_consumer: Callable, engine: Engine
) -> None:
    consumer = create_consumer()
    query = text("SELECT last_used_at FROM consumer_api_keys WHERE key_id = :key_id")

    def last_used() -> Any:
        with engine.connect() as connection:
            return connection.execute(query, {"key_id": consumer["key_id"]}).scalar_one()

    assert last_used() is None
    assert_envelope(client.get("/customer/data", headers=consumer["headers"]), 200)
    first = last_used()
    assert first is not None
    for _ in range(3):
        assert_envelope(client.get("/customer/data", headers=consumer["headers"]), 200)
    assert last_used() == first
