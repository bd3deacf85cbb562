"""POST /customer/data answered by its direct handler (``service.http.direct``).

The direct handler must accept nothing FastAPI's handler refuses, decline before it has
done anything (one token per request, whichever handler answers), and leave FastAPI's
order of checks as it was: a malformed body before the key, the key before the fields.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.config import Settings

BURST = 50
Consumer = dict[str, Any]
VALID = json.dumps({"name": "Ada", "email": "ada@example.com"})
REFUSED_BODIES = [
    pytest.param("text/plain", VALID, id="not-a-json-content-type"),
    pytest.param(None, VALID, id="no-content-type"),
    pytest.param("application/json", '{"name": "Ada", "extra": 1}', id="unknown-field"),
    pytest.param("application/json", '[{"name": "Ada"}]', id="not-an-object"),
    pytest.param("application/json", '{"name": "   "}', id="blank-name"),
    pytest.param("application/json", '{"name": "Ada", "status": "gone"}', id="bad-status"),
    pytest.param("application/json", "", id="empty"),
]
REFUSED_KEYS = ["", "two words", "k" * 256, "tab\there"]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """A bucket that does not refill during a test, so every token taken shows."""
    return settings.updated({"rate_limit_api_key_per_minute": 1, "rate_limit_api_key_burst": BURST})


def post(
    client: TestClient, body: str, content_type: str | None, headers: dict[str, str]
) -> httpx.Response:
    sent = dict(headers)
    if content_type is not None:
        sent["Content-Type"] = content_type
    return client.post("/customer/data", content=body.encode(), headers=sent)


def remaining(response: httpx.Response) -> int:
    return int(response.headers["x-ratelimit-remaining"])


@pytest.mark.parametrize(("content_type", "body"), REFUSED_BODIES)
def test_a_body_fastapi_refuses_is_refused_and_takes_one_token(
    client: TestClient,
    create_consumer: Callable[..., Consumer],
    content_type: str | None,
    body: str,
):
    consumer = create_consumer()

    refused = post(client, body, content_type, consumer["headers"])
    created = post(client, VALID, "application/json", consumer["headers"])

    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"]["status_code"] == "422"
    assert refused.headers["x-request-id"]
    assert [remaining(refused), remaining(created)] == [BURST - 1, BURST - 2]
    assert created.status_code == 201


@pytest.mark.parametrize("key", REFUSED_KEYS)
def test_an_idempotency_key_fastapi_refuses_is_refused(
    client: TestClient, create_consumer: Callable[..., Consumer], key: str
):
    consumer = create_consumer()

    response = post(
        client, VALID, "application/json", {**consumer["headers"], "Idempotency-Key": key}
    )

    assert response.status_code == 422, response.text
    assert remaining(response) == BURST - 1


def test_the_longest_idempotency_key_is_accepted(
    client: TestClient, create_consumer: Callable[..., Consumer]
):
    consumer = create_consumer()
    headers = {**consumer["headers"], "Idempotency-Key": "~" * 255}

    response = post(client, VALID, "application/json", headers)

    assert response.status_code == 201, response.text
    assert remaining(response) == BURST - 1


def test_a_json_subtype_fastapi_accepts_creates_once(
    client: TestClient, create_consumer: Callable[..., Consumer]
):
    consumer = create_consumer()

    response = post(client, VALID, "application/vnd.api+json", consumer["headers"])

    assert response.status_code == 201, response.text
    assert response.json()["data"]["email"] == "ada@example.com"
    assert remaining(response) == BURST - 1


def test_a_malformed_body_is_refused_before_the_key_is_looked_at(client: TestClient):
    response = post(client, '{"name": ', "application/json", {})

    assert response.status_code == 422
    assert "x-ratelimit-remaining" not in response.headers


def test_the_key_is_checked_before_the_fields(client: TestClient):
    response = post(client, '{"name": ""}', "application/json", {"X-API-Key": "fk_nope"})

    assert response.status_code == 401
