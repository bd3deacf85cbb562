"""Every status code answers the SPEC 4.1 envelope: framework, middleware and service errors."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from service.app import create_app
from service.config import Settings
from tests.support.api import assert_envelope, description
from tests.support.tcp_proxy import TcpProxy


def test_success_answers_carry_the_envelope(client: TestClient, create_consumer: Callable) -> None:
    consumer = create_consumer()
    created = client.post("/customer/data", json={"name": "Ada"}, headers=consumer["headers"])
    assert assert_envelope(created, 201)["name"] == "Ada"
    listing = assert_envelope(client.get("/customer/data", headers=consumer["headers"]), 200)
    assert set(listing) == {"items", "next_cursor", "count"}
    assert listing["count"] == 1


def test_unknown_route_is_404_envelope(client: TestClient) -> None:
    response = client.get("/no/such/route")
    assert_envelope(response, 404)
    assert "GET /no/such/route" in description(response)


def test_wrong_method_is_405_envelope(client: TestClient) -> None:
    response = client.delete("/health")
    assert_envelope(response, 405)
    assert "allowed: GET" in description(response)


def test_missing_key_is_401_and_admin_without_key_is_401(client: TestClient) -> None:
    assert_envelope(client.get("/customer/data"), 401)
    assert_envelope(client.post("/consumer/data", json={"name": "x"}), 401)


def test_tenant_key_on_admin_endpoint_is_403(client: TestClient, create_consumer: Callable) -> None:
    consumer = create_consumer()
    response = client.post("/consumer/data", json={"name": "abc"}, headers=consumer["headers"])
    assert_envelope(response, 403)


def test_duplicate_consumer_name_is_409(
    client: TestClient, create_consumer: Callable, admin_headers: dict[str, str]
) -> None:
    name = create_consumer()["name"]
    response = client.post("/consumer/data", json={"name": name}, headers=admin_headers)
    assert_envelope(response, 409)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": ""}, "body.name"),
        ({"name": "x" * 201}, "body.name"),
        ({"name": "ok", "status": "deleted"}, "body.status"),
        ({"name": "ok", "email": "not-an-email"}, "body.email"),
        ({"name": "ok", "colour": "red"}, "body.colour"),
        ({"name": 5}, "body.name"),
    ],
)
def test_validation_errors_are_422_naming_the_field(
    client: TestClient, create_consumer: Callable, body: dict[str, Any], field: str
) -> None:
    consumer = create_consumer()
    response = client.post("/customer/data", json=body, headers=consumer["headers"])
    assert_envelope(response, 422)
    assert field in description(response)


def test_malformed_json_is_422(client: TestClient, create_consumer: Callable) -> None:
    consumer = create_consumer()
    headers = {**consumer["headers"], "Content-Type": "application/json"}
    response = client.post("/customer/data", content=b'{"name": ', headers=headers)
    assert_envelope(response, 422)
    assert "malformed JSON" in description(response)


def test_bad_uuid_in_path_is_422_naming_the_parameter(
    client: TestClient, create_consumer: Callable
) -> None:
    consumer = create_consumer()
    response = client.get("/customer/data/not-a-uuid", headers=consumer["headers"])
    assert_envelope(response, 422)
    assert "path.customer_id" in description(response)


def test_bad_cursor_is_400(client: TestClient, create_consumer: Callable) -> None:
    consumer = create_consumer()
    response = client.get("/customer/data?cursor=garbage!", headers=consumer["headers"])
    assert_envelope(response, 400)


def test_declared_oversize_body_is_413(client: TestClient, settings: Settings) -> None:
    body = b"x" * (settings.http.max_body_bytes + 1)
    response = client.post("/customer/data", content=body, headers={"X-API-Key": "x"})
    assert_envelope(response, 413)


def test_streamed_oversize_body_is_413(
    client: TestClient, create_consumer: Callable, settings: Settings
) -> None:
    consumer = create_consumer()

    def chunks() -> Iterator[bytes]:
        for _ in range(settings.http.max_body_bytes // 65536 + 2):
            yield b" " * 65536

    headers = {**consumer["headers"], "Content-Type": "application/json"}
    response = client.post("/customer/data", content=chunks(), headers=headers)
    assert_envelope(response, 413)


def test_rate_limited_tenant_gets_429_with_retry_after(
    client: TestClient, create_consumer: Callable
) -> None:
    consumer = create_consumer(rate_limit_per_minute=1, rate_limit_burst=1)
    assert_envelope(client.get("/customer/data", headers=consumer["headers"]), 200)
    refused = client.get("/customer/data", headers=consumer["headers"])
    assert_envelope(refused, 429)
    assert int(refused.headers["Retry-After"]) >= 1


def test_unhandled_error_is_500_envelope_without_traceback(app: FastAPI) -> None:
    def explode() -> None:
        raise RuntimeError("secret internals")

    app.add_api_route("/explode", explode)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/explode", headers={"X-Request-ID": "req-500-test"})
    assert_envelope(response, 500)
    assert "secret internals" not in response.text
    assert "req-500-test" in description(response)
    assert response.headers["X-Request-ID"] == "req-500-test"


@pytest.fixture
def db_proxy(tcp_proxy_factory: Callable[[str, int], TcpProxy], settings: Settings) -> TcpProxy:
    url = make_url(settings.database.url)
    return tcp_proxy_factory(url.host or "127.0.0.1", url.port or 5432)


@pytest.fixture
def proxied_client(settings: Settings, db_proxy: TcpProxy) -> Iterator[TestClient]:
    """A client whose app reaches PostgreSQL through ``db_proxy``."""
    proxied = settings.updated({"database_url": db_proxy.url_for(settings.database.url)})
    with TestClient(create_app(proxied)) as client:
        yield client


def test_lost_database_is_503_envelope(
    proxied_client: TestClient, db_proxy: TcpProxy, admin_headers: dict[str, str]
) -> None:
    created = proxied_client.post(
        "/consumer/data", json={"name": f"c_{uuid.uuid4().hex[:8]}"}, headers=admin_headers
    )
    headers = {"X-API-Key": assert_envelope(created, 201)["api_key"]}
    assert_envelope(proxied_client.get("/customer/data", headers=headers), 200)
    db_proxy.refuse()
    db_proxy.close_all()
    response = proxied_client.get("/customer/data", headers=headers)
    assert_envelope(response, 503)
    assert "Traceback" not in response.text
