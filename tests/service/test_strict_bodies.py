"""Strict request bodies: JSON ``true`` is not a number, ``"5"`` is not an integer, ``5`` is
not a string, in every request model; a refused body changes nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel
from sqlalchemy import Engine

import service.app  # noqa: F401  (imports every router, hence every request model)
from service.http.schemas import StrictInput, json_integer
from tests.support.api import assert_envelope, tenant_row_counts
from tests.support.names import unique_name

SCALARS = {"int", "bool", "str", "float"}
RECEIPT = {"event_id": "00000000-0000-4000-8000-000000000000", "status": "failed"}


def request_models() -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = []
    todo: list[type[BaseModel]] = list(StrictInput.__subclasses__())
    while todo:
        model = todo.pop()
        found.append(model)
        todo.extend(model.__subclasses__())
    return found


def lax_scalars(schema: Any, path: str = "") -> Iterator[str]:
    """Paths of int/bool/str/float schemas that would coerce (not ``strict``, nor behind
    ``json_integer``, which refuses booleans and strings first)."""
    if isinstance(schema, dict):
        guarded = schema.get("type") == "function-before" and schema["function"]
        if guarded and guarded.get("function") is json_integer:
            return
        if schema.get("type") in SCALARS and not schema.get("strict"):
            yield f"{path} ({schema['type']})"
        for name, value in schema.items():
            yield from lax_scalars(value, f"{path}.{name}")
    elif isinstance(schema, list):
        for index, value in enumerate(schema):
            yield from lax_scalars(value, f"{path}[{index}]")


def test_every_request_model_uses_strict_scalars() -> None:
    models = request_models()
    assert len(models) >= 8
    lax = {model.__name__: list(lax_scalars(model.__pydantic_core_schema__)) for model in models}
    assert {name: paths for name, paths in lax.items() if paths} == {}


@pytest.mark.parametrize(
    "body",
    [
        {"rate_limit_per_minute": True},
        {"rate_limit_per_minute": "5"},
        {"rate_limit_burst": 5.5},
        {"rate_limit_burst": [5]},
        {"description": 5},
    ],
)
def test_consumer_create_refuses_coercible_values(
    client: TestClient, admin_headers: dict[str, str], body: dict[str, Any]
) -> None:
    name = unique_name("strict")
    response = client.post("/consumer/data", json={"name": name, **body}, headers=admin_headers)
    assert_envelope(response, 422)
    listed = client.get("/consumer/data", headers=admin_headers, params={"limit": 200})
    assert name not in str(listed.json())


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/customer/data", {"name": 5}),
        ("POST", "/customer/data", {"name": "Ada", "email": True}),
        ("POST", "/events/resend", {"period_in_days": True}),
        ("POST", "/events/redeliver", {"dry_run": 1}),
        ("POST", "/events/resend", {"dry_run": "true"}),
        ("POST", "/events/resend", {"limit": "10"}),
        ("POST", "/events/confirm-delivery", {"event_id": 5, "status": "processed"}),
        ("POST", "/events/confirm-deliveries", {"receipts": [{"event_id": 5, "status": "failed"}]}),
        ("POST", "/events/confirm-deliveries", {"receipts": [{**RECEIPT, "detail": 5}]}),
    ],
)
def test_tenant_bodies_refuse_coercible_values(
    client: TestClient,
    engine: Engine,
    create_consumer: Callable[..., dict[str, Any]],
    method: str,
    path: str,
    body: dict[str, Any],
) -> None:
    consumer = create_consumer()
    before = tenant_row_counts(engine, consumer["consumer_id"])
    response = client.request(method, path, json=body, headers=consumer["headers"])
    assert_envelope(response, 422)
    assert tenant_row_counts(engine, consumer["consumer_id"]) == before


def test_patch_consumer_refuses_a_boolean_limit(
    client: TestClient,
    create_consumer: Callable[..., dict[str, Any]],
    admin_headers: dict[str, str],
) -> None:
    consumer = create_consumer()
    path = f"/consumer/data/{consumer['consumer_id']}"
    assert_envelope(client.patch(path, json={"rate_limit_burst": True}, headers=admin_headers), 422)
    assert client.get(path, headers=admin_headers).json()["data"]["rate_limit_burst"] is None


def test_an_integral_float_is_a_json_integer(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    body = {"name": unique_name("strict"), "rate_limit_per_minute": 60.0}
    created = assert_envelope(client.post("/consumer/data", json=body, headers=admin_headers), 201)
    assert created["rate_limit_per_minute"] == 60
