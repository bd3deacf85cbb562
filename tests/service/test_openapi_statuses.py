"""Every operation declares every status its guards can answer (service/http/responses.py).

Read off the app's own OpenAPI document: a route behind a key declares the auth statuses
(the throttles' 429 included), a route with a body the body statuses, a route with
parameters 422, and every route 500. A route added without ``declared(...)`` fails here.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI

from service.http.responses import AUTHENTICATED, EVERY_ROUTE, WITH_BODY, WITH_PARAMETERS


def operations(app: FastAPI) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{method.upper()} {path}", operation)
        for path, methods in app.openapi()["paths"].items()
        for method, operation in methods.items()
    ]


def required_statuses(operation: dict[str, Any]) -> set[int]:
    required = set(EVERY_ROUTE)
    if operation.get("security"):
        required.update(AUTHENTICATED)
    if "requestBody" in operation:
        required.update(WITH_BODY)
    if operation.get("parameters"):
        required.update(WITH_PARAMETERS)
    return required


def test_every_operation_declares_what_its_guards_answer(app: FastAPI) -> None:
    missing = {
        name: sorted(required_statuses(operation) - {int(s) for s in operation["responses"]})
        for name, operation in operations(app)
    }
    assert {name: codes for name, codes in missing.items() if codes} == {}


def test_declared_errors_are_envelopes(app: FastAPI) -> None:
    for name, operation in operations(app):
        for status, response in operation["responses"].items():
            if int(status) >= 400:
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorEnvelope"}, (name, status)


@pytest.mark.parametrize(
    "name",
    [
        "POST /events/confirm-delivery",
        "POST /events/confirm-deliveries",
        "GET /events/last-delivered",
        "POST /consumer/data",
    ],
)
def test_routes_outside_the_rate_limit_still_declare_the_throttles_429(
    app: FastAPI, name: str
) -> None:
    """No per-key rate limit there, but the failed-auth throttles answer 429 on them."""
    declared = dict(operations(app))[name]["responses"]
    assert "429" in declared
