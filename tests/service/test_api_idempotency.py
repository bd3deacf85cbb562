"""Idempotency-Key on POST /customer/data: a retried create answers the first customer."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from tests.support.api import Consumer, assert_envelope, events_of, tenant_row_counts

REPLAYED = "Idempotent-Replayed"


def create(
    client: TestClient | httpx.Client, tenant: Consumer, key: str, **body: Any
) -> httpx.Response:
    headers = {**tenant["headers"], "Idempotency-Key": key}
    return client.post("/customer/data", json={"name": "Ada", **body}, headers=headers)


def test_a_repeated_key_answers_the_first_customer_and_writes_nothing_more(
    client: TestClient, tenant: Consumer, engine: Engine
) -> None:
    first = create(client, tenant, "order-1001", email="ada@example.com")
    again = create(client, tenant, "order-1001", email="ada@example.com")

    assert again.json() == first.json()
    assert again.status_code == 201
    assert again.headers[REPLAYED] == "true"
    assert REPLAYED not in first.headers
    customer = assert_envelope(first, 201)
    assert len(events_of(engine, customer["customer_id"])) == 1
    counts = tenant_row_counts(engine, tenant["consumer_id"])
    assert counts["customers"] == 1 and counts["idempotency_keys"] == 1


def test_defaults_spelled_out_are_the_same_request(client: TestClient, tenant: Consumer) -> None:
    first = assert_envelope(create(client, tenant, "k-defaults"), 201)
    again = create(client, tenant, "k-defaults", status="active", email=None)

    assert assert_envelope(again, 201) == first


def test_a_key_reused_with_another_body_answers_409_and_writes_nothing(
    client: TestClient, tenant: Consumer, engine: Engine
) -> None:
    assert_envelope(create(client, tenant, "k-mismatch"), 201)
    before = tenant_row_counts(engine, tenant["consumer_id"])

    response = create(client, tenant, "k-mismatch", name="Someone Else")

    assert_envelope(response, 409)
    assert "different request body" in response.json()["detail"]["status_description"]
    assert tenant_row_counts(engine, tenant["consumer_id"]) == before


def test_keys_belong_to_one_tenant(
    client: TestClient, create_consumer: Callable[..., Consumer], engine: Engine
) -> None:
    first, second = create_consumer(), create_consumer()

    mine = assert_envelope(create(client, first, "shared-key"), 201)
    theirs = assert_envelope(create(client, second, "shared-key"), 201)

    assert mine["customer_id"] != theirs["customer_id"]
    assert tenant_row_counts(engine, second["consumer_id"])["customers"] == 1


def test_without_a_key_every_create_is_new(client: TestClient, tenant: Consumer) -> None:
    body = {"name": "Twice"}
    first = client.post("/customer/data", json=body, headers=tenant["headers"])
    second = client.post("/customer/data", json=body, headers=tenant["headers"])

    ids = {assert_envelope(r, 201)["customer_id"] for r in (first, second)}
    assert len(ids) == 2


def test_an_expired_key_creates_a_new_customer(
    client: TestClient, tenant: Consumer, engine: Engine
) -> None:
    first = assert_envelope(create(client, tenant, "k-expired"), 201)
    age_keys(engine, tenant)

    again = create(client, tenant, "k-expired")

    assert assert_envelope(again, 201)["customer_id"] != first["customer_id"]
    assert REPLAYED not in again.headers
    assert tenant_row_counts(engine, tenant["consumer_id"])["idempotency_keys"] == 1


@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "tab\there", "naïve"])
def test_a_malformed_key_answers_422_and_writes_nothing(
    client: TestClient, tenant: Consumer, engine: Engine, key: str
) -> None:
    before = tenant_row_counts(engine, tenant["consumer_id"])
    headers = {**tenant["headers"], "Idempotency-Key": key}
    response = client.post(
        "/customer/data", json={"name": "Ada"}, headers=httpx.Headers(headers, encoding="utf-8")
    )

    assert_envelope(response, 422)
    assert "Idempotency-Key" in response.json()["detail"]["status_description"]
    assert tenant_row_counts(engine, tenant["consumer_id"]) == before


def test_concurrent_retries_with_one_key_create_one_customer(
    live_server: str, tenant: Consumer, engine: Engine
) -> None:
    with httpx.Client(base_url=live_server, timeout=30) as http, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: create(http, tenant, "k-race"), range(16)))

    bodies = {response.text for response in answers}
    assert [response.status_code for response in answers] == [201] * 16
    assert len(bodies) == 1
    assert sum(response.headers.get(REPLAYED) == "true" for response in answers) == 15
    customer = assert_envelope(answers[0], 201)
    assert tenant_row_counts(engine, tenant["consumer_id"])["customers"] == 1
    assert len(events_of(engine, customer["customer_id"])) == 1


def test_keyed_creates_purge_expired_keys_a_few_at_a_time(
    client: TestClient, tenant: Consumer, engine: Engine
) -> None:
    for index in range(12):
        assert_envelope(create(client, tenant, f"old-{index}"), 201)
    age_keys(engine, tenant)

    expired_before = expired_keys(engine)

    assert_envelope(create(client, tenant, "new-1"), 201)

    assert expired_before >= 12
    assert expired_keys(engine) == expired_before - 10


def age_keys(engine: Engine, tenant: Consumer) -> None:
    """Make every key of ``tenant`` 25 hours old (past the 24-hour window)."""
    with engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE idempotency_keys SET created_at = now() - interval '25 hours'"
                " WHERE consumer_id = :consumer_id"
            ),
            {"consumer_id": tenant["consumer_id"]},
        )


def expired_keys(engine: Engine) -> int:
    """Expired keys of every tenant in this database (the purge takes any tenant's)."""
    with engine.connect() as connection:
        return int(
            connection.execute(
                text(
                    "SELECT count(*) FROM idempotency_keys"
                    " WHERE created_at < now() - interval '24 hours'"
                )
            ).scalar_one()
        )
