"""Hostile input: nesting bombs, oversize and malformed bodies, NUL, injection and unicode.

Every body-taking operation gets the same bombs: each must answer a 4xx envelope (never a
500) and write nothing. Strings built to break SQL or text handling are stored and
returned byte-for-byte, and the tables they name are still there afterwards.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from service.config import Settings
from tests.reliability.operations import GUARDED, TENANT
from tests.support.api import assert_envelope, tenant_row_counts

WITH_BODY = [operation for operation in GUARDED if operation.body is not None]
HOSTILE_TEXT = [
    "'; DROP TABLE customers;--",
    "Robert'); DROP TABLE consumers; --",
    '" OR "1"="1',
    "$$; SELECT pg_sleep(30); $$",
    "%_\\%' ESCAPE '\\",
    "😀 👩‍👩‍👧‍👦 🏳️‍🌈",
    "\u202eevil\u202c and \u200bzero width",
    "مرحبا بالعالم",
    "שלום עולם",
    "e\u0301 vs \u00e9",
    "\U0001d518\U0001d52b\U0001d526 astral and \U0010fffd private use",
    "<script>alert(1)</script>{{7*7}}${7*7}",
    "../../etc/passwd\\..\\",
    "tab\tnewline\ncarriage\r end",
    "  padded  ",
]
BOMBS = {
    "10,000 levels of arrays": b'{"x": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
    "10,000 levels of objects": b'{"x": ' + b'{"a":' * 10_000 + b"1" + b"}" * 10_001,
    "5,000-digit number": b'{"x": ' + b"9" * 5000 + b"}",
    "invalid UTF-8": b'{"name": "\xff\xfe"}',
    "truncated JSON": b'{"name": "Ada',
    "lone surrogate": b'{"name": "\\ud800", "tags": {"a": "\\udfff"}, "metrics": {"\\ud800": 1}}',
    "NUL in every string": b'{"name": "a\\u0000", "status": "\\u0000", "tags": {"a": "\\u0000"},'
    b' "metrics": {"a": "\\u0000"}, "description": "\\u0000", "detail": "\\u0000"}',
    "empty body": b"",
    "a JSON array": b"[]",
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.updated({"failed_auth_limit": 1_000_000})


def headers_for(operation: Any, victim: dict[str, Any], admin: dict[str, str]) -> dict[str, str]:
    credential = victim["headers"] if operation.audience == TENANT else admin
    return {**credential, "Content-Type": "application/json"}


@pytest.mark.parametrize("bomb", list(BOMBS))
def test_every_body_refuses_bombs_with_a_4xx_envelope_and_writes_nothing(
    client: TestClient,
    engine: Engine,
    victim: dict[str, Any],
    admin_headers: dict[str, str],
    bomb: str,
) -> None:
    before = tenant_row_counts(engine, victim["consumer_id"])
    answers = {}
    for operation in WITH_BODY:
        response = client.request(
            operation.method,
            operation.path.format(**victim["ids"]),
            content=BOMBS[bomb],
            headers=headers_for(operation, victim, admin_headers),
        )
        answers[operation.name] = response.status_code
        if 400 <= response.status_code < 500:
            assert_envelope(response, response.status_code)
    assert {name: code for name, code in answers.items() if not 400 <= code < 500} == {}
    assert tenant_row_counts(engine, victim["consumer_id"]) == before


def test_every_body_over_the_limit_is_413(
    client: TestClient, victim: dict[str, Any], admin_headers: dict[str, str], settings: Settings
) -> None:
    oversize = json.dumps({"name": "x" * settings.http.max_body_bytes}).encode()
    for operation in WITH_BODY:
        response = client.request(
            operation.method,
            operation.path.format(**victim["ids"]),
            content=oversize,
            headers=headers_for(operation, victim, admin_headers),
        )
        assert_envelope(response, 413)


def test_nesting_is_stored_to_a_sane_depth_and_refused_beyond(
    client: TestClient, victim: dict[str, Any]
) -> None:
    path = f"/customer/data/{victim['ids']['customer_id']}/analytics"
    sane = nested(100)
    stored = client.post(path, json={"metrics": {"deep": sane}}, headers=victim["headers"])
    refused = client.post(path, json={"metrics": {"deep": nested(300)}}, headers=victim["headers"])

    assert assert_envelope(stored, 201)["metrics"] == {"deep": sane}
    assert_envelope(refused, 422)


def nested(depth: int) -> Any:
    """``depth`` levels of alternating objects and arrays around a number."""
    value: Any = 1
    for _ in range(depth // 2):
        value = {"a": [value]}
    return value


@pytest.mark.parametrize("hostile", HOSTILE_TEXT)
def test_injection_and_unicode_are_stored_and_returned_literally(
    client: TestClient,
    engine: Engine,
    victim: dict[str, Any],
    admin_headers: dict[str, str],
    hostile: str,
) -> None:
    tenant = victim["headers"]
    created = client.post("/customer/data", json={"name": hostile}, headers=tenant)
    customer = assert_envelope(created, 201)
    base = f"/customer/data/{customer['customer_id']}"
    tags = client.put(f"{base}/tags", json={"tags": {"note": hostile}}, headers=tenant)
    metrics = {hostile: hostile, "nested": [hostile, {hostile: 1}]}
    snapshot = client.post(f"{base}/analytics", json={"metrics": metrics}, headers=tenant)
    consumer = client.patch(
        f"/consumer/data/{victim['consumer_id']}",
        json={"description": hostile},
        headers=admin_headers,
    )

    assert assert_envelope(client.get(base, headers=tenant), 200)["name"] == hostile
    assert assert_envelope(tags, 200)["tags"] == {"note": hostile}
    assert (
        assert_envelope(client.get(f"{base}/tags", headers=tenant), 200)["tags"]["note"] == hostile
    )
    assert assert_envelope(snapshot, 201)["metrics"] == metrics
    assert assert_envelope(consumer, 200)["description"] == hostile
    with engine.connect() as connection:
        stored = connection.execute(
            text("SELECT name FROM customers WHERE customer_id = :id"),
            {"id": customer["customer_id"]},
        ).scalar_one()
        tables = connection.execute(
            text("SELECT count(*) FROM pg_tables WHERE tablename IN ('customers', 'consumers')")
        ).scalar_one()
    assert (stored, tables) == (hostile, 2)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/customer/data?status=' OR 1=1 --", 422),
        ("/customer/data?status=active%00", 422),
        ("/customer/data?cursor=' UNION SELECT * FROM consumer_api_keys --", 400),
        ("/events?event_type=customer_creation'; DROP TABLE customer_events;--", 422),
        ("/events?customer_id=1 OR 1=1", 422),
        ("/events?since=now()); DROP TABLE customers;--", 422),
        ("/customer/data/' OR '1'='1/tags", 422),
        ("/customer/data/00000000-0000-4000-8000-000000000000/tags/a'b", 422),
    ],
)
def test_injection_in_query_and_path_is_a_clean_4xx(
    client: TestClient, victim: dict[str, Any], engine: Engine, path: str, status: int
) -> None:
    before = tenant_row_counts(engine, victim["consumer_id"])
    method = "DELETE" if path.endswith("a'b") else "GET"
    response = client.request(method, path, headers=victim["headers"])

    assert_envelope(response, status)
    assert tenant_row_counts(engine, victim["consumer_id"]) == before
