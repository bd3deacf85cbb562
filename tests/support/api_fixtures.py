"""API fixtures for every test folder (a plugin of tests/conftest.py): an app on the
worker's database, a client, tenants, customers.

``client`` runs the lifespan (engine, rate limiter, auth throttle). ``create_consumer``
makes a tenant through the admin API and returns ``{consumer_id, name, api_key, headers}``;
``tenant`` is one made that way; ``create_customer(consumer, **fields)`` creates a customer
as that tenant and returns its data. ``api`` is an httpx client on ``live_server``.
A folder whose tenant must come from elsewhere (a live API, the CLI, a row) overrides
``tenant`` in its conftest.py and says why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from tests.support.api import Consumer
from tests.support.names import unique_name


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def admin_headers(settings: Settings) -> dict[str, str]:
    assert settings.auth.admin_api_key
    return {"X-Admin-Key": settings.auth.admin_api_key}


@pytest.fixture
def create_consumer(client: TestClient, admin_headers: dict[str, str]) -> Callable[..., Consumer]:
    """Factory: a new tenant via ``POST /consumer/data``."""

    def create(name: str | None = None, **fields: Any) -> Consumer:
        body = {"name": name or unique_name("c"), **fields}
        response = client.post("/consumer/data", json=body, headers=admin_headers)
        assert response.status_code == 201, response.text
        data = response.json()["data"]
        return {**data, "headers": {"X-API-Key": data["api_key"]}}

    return create


@pytest.fixture
def tenant(create_consumer: Callable[..., Consumer]) -> Consumer:
    """A new tenant made through the admin API (``create_consumer()``)."""
    return create_consumer()


@pytest.fixture
def api(live_server: str) -> Iterator[httpx.Client]:
    """An httpx client on the live API (``live_server``)."""
    with httpx.Client(base_url=live_server, timeout=10) as client:
        yield client


@pytest.fixture
def create_customer(client: TestClient) -> Callable[..., dict[str, Any]]:
    """Factory: a customer of ``consumer`` via ``POST /customer/data``."""

    def create(consumer: Consumer, **fields: Any) -> dict[str, Any]:
        body = {"name": fields.pop("name", unique_name("customer")), **fields}
        response = client.post("/customer/data", json=body, headers=consumer["headers"])
        assert response.status_code == 201, response.text
        data: dict[str, Any] = response.json()["data"]
        return data

    return create
