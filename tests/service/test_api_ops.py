"""Operations: request ids, audit rows, /health, /ready, /metrics and the OpenAPI document."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from service.app import create_app
from service.config import Settings
from service.http.deps import AdminAccess
from service.ops.checks import READY_CACHE_SECONDS, ReadinessCache
from tests.support.api import assert_envelope, description
from tests.support.tcp_proxy import TcpProxy


def audit_rows(engine: Engine, request_id: str) -> list[Any]:
    with engine.connect() as connection:
        return list(
            connection.execute(
                text(
                    "SELECT actor, action, status_code, method, path FROM audit_log"
                    " WHERE request_id = :request_id"
                ),
                {"request_id": request_id},
            )
        )


def test_sane_request_id_is_echoed_and_others_replaced(client: TestClient) -> None:
    echoed = client.get("/health", headers={"X-Request-ID": "abc-123.def:9"})
    assert echoed.headers["X-Request-ID"] == "abc-123.def:9"
    replaced = client.get("/health", headers={"X-Request-ID": "bad id\twith spaces" + "x" * 200})
    assert replaced.headers["X-Request-ID"] != "bad id"
    assert len(replaced.headers["X-Request-ID"]) == 32
    assert len(client.get("/health").headers["X-Request-ID"]) == 32


def test_admin_actions_are_audited_with_the_request_id(
    client: TestClient, admin_headers: dict[str, str], engine: Engine
) -> None:
    headers = {**admin_headers, "X-Request-ID": "audit-admin-1"}
    assert_envelope(client.get("/consumer/data", headers=headers), 200)
    [row] = audit_rows(engine, "audit-admin-1")
    assert row.actor == "admin" and row.status_code == 200
    assert row.action == "admin_action: GET /consumer/data"
    refused = {"X-Admin-Key": "wrong", "X-Request-ID": "audit-admin-2"}
    assert_envelope(client.get("/consumer/data/" + "0" * 32, headers=refused), 401)
    assert audit_rows(engine, "audit-admin-2") == [], "a refused stranger writes nothing"


def test_tenant_reads_are_not_audited(
    client: TestClient, create_consumer: Callable, engine: Engine
) -> None:
    consumer = create_consumer()
    headers = {**consumer["headers"], "X-Request-ID": "audit-tenant-1"}
    assert_envelope(client.get("/customer/data", headers=headers), 200)
    assert audit_rows(engine, "audit-tenant-1") == []


def test_server_errors_of_verified_callers_are_audited(
    app: FastAPI, engine: Engine, admin_headers: dict[str, str]
) -> None:
    def explode(_: AdminAccess) -> None:
        raise RuntimeError("boom")

    app.add_api_route("/explode", explode)
    with TestClient(app, raise_server_exceptions=False) as client:
        headers = {**admin_headers, "X-Request-ID": "audit-500"}
        assert_envelope(client.get("/explode", headers=headers), 500)
        anonymous = {"X-Admin-Key": "wrong", "X-Request-ID": "audit-500-anonymous"}
        assert_envelope(client.get("/explode", headers=anonymous), 401)
    [row] = audit_rows(engine, "audit-500")
    assert row.status_code == 500 and row.action == "server_error: GET /explode"
    assert audit_rows(engine, "audit-500-anonymous") == []


def test_health_and_ready_report_each_dependency(client: TestClient) -> None:
    assert assert_envelope(client.get("/health"), 200) == {"status": "ok"}
    ready = assert_envelope(client.get("/ready"), 200)
    assert ready["ready"] is True
    for name in ("database", "broker", "redis"):
        assert ready[name]["ok"] is True


def test_ready_reports_broker_and_redis_down_without_failing(settings: Settings) -> None:
    degraded = settings.updated(
        {
            "rabbitmq_url": "amqp://fintegrate_user:fintegrate_pass@127.0.0.1:1/none",
            "redis_url": "redis://127.0.0.1:1/0",
        }
    )
    with TestClient(create_app(degraded)) as client:
        ready = assert_envelope(client.get("/ready"), 200)
    assert ready["database"]["ok"] is True
    assert ready["broker"]["ok"] is False and ready["redis"]["ok"] is False


def test_ready_is_503_when_the_database_is_unreachable(
    settings: Settings, tcp_proxy_factory: Callable[[str, int], TcpProxy]
) -> None:
    url = make_url(settings.database.url)
    proxy = tcp_proxy_factory(url.host or "127.0.0.1", url.port or 5432)
    proxied = settings.updated({"database_url": proxy.url_for(settings.database.url)})
    with TestClient(create_app(proxied)) as client:
        assert_envelope(client.get("/ready"), 200)
        proxy.refuse()
        proxy.close_all()
        assert_envelope(client.get("/ready"), 200)  # the result is shared for a moment
        time.sleep(READY_CACHE_SECONDS)
        response = client.get("/ready")
    assert_envelope(response, 503)
    assert "database unreachable" in description(response)
    assert "broker ok" in description(response)


def test_ready_is_cheap_for_strangers(app: FastAPI) -> None:
    with TestClient(app) as client:
        answers = [client.get("/ready") for _ in range(30)]
        cache: ReadinessCache = app.state.readiness
        assert {answer.status_code for answer in answers} == {200}
        assert cache.refreshes == 1, "one database, broker and Redis check for 30 calls"
        time.sleep(READY_CACHE_SECONDS)
        assert_envelope(client.get("/ready"), 200)
        assert cache.refreshes == 2


def test_metrics_count_requests_by_route_template(
    client: TestClient, create_consumer: Callable, create_customer: Callable
) -> None:
    consumer = create_consumer()
    customer = create_customer(consumer)
    client.get(f"/customer/data/{customer['customer_id']}", headers=consumer["headers"])
    body = client.get("/metrics").text
    assert (
        'fintegrate_http_requests_total{method="GET",route="/customer/data/{customer_id}",'
        'status="200"} 1.0' in body
    )
    assert "fintegrate_http_request_duration_seconds_bucket" in body
    assert customer["customer_id"] not in body


def test_openapi_documents_envelopes_errors_and_stable_ids(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    operation_ids = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            operation_ids.append(operation["operationId"])
            if path == "/metrics":
                continue
            success = next(code for code in operation["responses"] if code.startswith("2"))
            schema = operation["responses"][success]["content"]["application/json"]["schema"]
            assert schema["$ref"].split("/")[-1].startswith("Envelope"), (method, path)
            for code, response in operation["responses"].items():
                if code.startswith(("4", "5")):
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorEnvelope"), (method, path, code)
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and parameter["name"].endswith("_id"):
                    assert parameter["schema"]["format"] == "uuid"
    assert len(operation_ids) == len(set(operation_ids))
    assert "create_customer" in operation_ids
    assert client.get("/docs").status_code == 200


def test_startup_freezes_live_objects_out_of_full_collections(app: FastAPI) -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0

    with TestClient(app) as started:
        assert started.get("/health").status_code == 200
        assert gc.get_freeze_count() > 0
