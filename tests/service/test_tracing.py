"""One trace from the API call to the receipt, across the API, relay and worker processes.

The processes export over OTLP/HTTP to a receiver in the test (tests/support/otlp.py); the
client sends its own ``traceparent``, so every span of the event must carry its trace id.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from service.app import create_app
from service.config import Settings
from service.http.tracing import TracingMiddleware
from service.kit import tracing
from tests.support.api import create_tenant_over_http
from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.support.outbox import wait_until
from tests.support.processes import FintegrateProcess, serve_api
from tests.support.receiver import Receiver
from tests.support.webhooks import WEBHOOK_SETTINGS, endpoint_for

SERVER, PRODUCER, CONSUMER = 2, 4, 5  # OTLP Span.SpanKind values


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    otlp = OtlpReceiver().start()
    yield otlp
    otlp.stop()


def otel_environment(receiver: OtlpReceiver) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_TRACES_SAMPLER": "always_on",
    }


@pytest.fixture
def traced_platform(
    settings: Settings, tmp_path: Path, receiver: OtlpReceiver
) -> Iterator[dict[str, Any]]:
    """API, relay and worker processes exporting spans to ``receiver``; one tenant."""
    environment = otel_environment(receiver)
    processes: list[FintegrateProcess] = []
    try:
        api, api_url = serve_api(settings, tmp_path, extra_env=environment)
        processes.append(api)
        tenant = create_tenant_over_http(api_url, settings.auth.admin_api_key, "trace")
        worker_env = {**environment, "FINTEGRATE_API_KEY": tenant["api_key"]}
        worker_env["FINTEGRATE_API_URL"] = api_url
        processes.append(FintegrateProcess("relay", ["relay"], settings, tmp_path, environment))
        processes.append(
            FintegrateProcess(
                "worker", ["consume", "--consumer", tenant["name"]], settings, tmp_path, worker_env
            )
        )
        for process in processes[1:]:
            process.start()
        yield {"api_url": api_url, "tenant": tenant, "processes": processes}
    finally:
        for process in reversed(processes):
            process.terminate()


def test_one_trace_links_the_api_call_publish_handler_and_confirm_delivery(
    traced_platform: dict[str, Any], receiver: OtlpReceiver, engine: Engine
) -> None:
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    tenant = traced_platform["tenant"]
    created = httpx.post(
        f"{traced_platform['api_url']}/customer/data",
        json={"name": "Grace", "email": "grace@example.com"},
        headers={"X-API-Key": tenant["api_key"], "traceparent": f"00-{trace_id}-{client_span}-01"},
        timeout=10,
    )
    assert created.status_code == 201, created.text
    customer_id = created.json()["data"]["customer_id"]
    with engine.connect() as connection:
        event_id, stored = connection.execute(
            text("SELECT event_id, traceparent FROM customer_events WHERE customer_id = :c"),
            {"c": customer_id},
        ).one()
    assert stored.split("-")[1] == trace_id

    def trace() -> list[ReceivedSpan]:
        return [span for span in receiver.spans if span.trace_id == trace_id]

    expected = {
        "POST /customer/data",
        "send customer_events",
        f"process customer_notification_{tenant['name']}",
        "handle customer_creation",
        "POST /events/confirm-delivery",
    }

    def complete() -> bool:  # each process exports on its own schedule: wait for all
        return expected <= {span.name for span in trace()}

    logs = lambda: {p.name: p.log_text()[-1500:] for p in traced_platform["processes"]}  # noqa: E731
    assert wait_until(complete, timeout=90), (receiver.spans, logs())
    spans = {span.name: span for span in trace()}
    request = spans["POST /customer/data"]
    assert (request.service, request.kind, request.parent_span_id) == (
        "fintegrate-api",
        SERVER,
        client_span,
    )
    assert request.attributes == {
        "http.request.method": "POST",
        "url.path": "/customer/data",
        "http.route": "/customer/data",
        "http.response.status_code": 201,
    }
    send = spans["send customer_events"]
    assert (send.service, send.kind, send.parent_span_id) == (
        "fintegrate-relay",
        PRODUCER,
        request.span_id,
    )
    assert send.attributes["messaging.system"] == "rabbitmq"
    assert send.attributes["messaging.message.id"] == str(event_id)
    assert send.attributes["messaging.destination.name"] == "customer_events"
    process = spans[f"process customer_notification_{tenant['name']}"]
    assert (process.service, process.kind, process.parent_span_id) == (
        "fintegrate-worker",
        CONSUMER,
        send.span_id,
    )
    assert process.attributes["messaging.message.id"] == str(event_id)
    handler = spans["handle customer_creation"]
    assert handler.parent_span_id == process.span_id
    receipt = spans["POST /events/confirm-delivery"]
    assert (receipt.service, receipt.kind, receipt.parent_span_id) == (
        "fintegrate-api",
        SERVER,
        process.span_id,
    )


def test_tracing_is_off_without_otel_variables(client: TestClient, engine: Engine) -> None:
    """No exporter configured: no tracing middleware, no traceparent stored."""
    assert tracing.wanted({}) is False
    assert tracing.ENABLED is False
    assert all(m.cls is not TracingMiddleware for m in client.app.user_middleware)  # type: ignore[attr-defined]
    assert tracing.current_traceparent() is None


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_SERVICE_NAME": "api"}, False),
    ],
)
def test_the_standard_variables_decide_whether_to_trace(
    environ: dict[str, str], expected: bool
) -> None:
    assert tracing.wanted(environ) is expected


def test_an_untraced_api_stores_no_trace_context(settings: Settings, engine: Engine) -> None:
    with TestClient(create_app(settings)) as client:
        admin = {"X-Admin-Key": settings.auth.admin_api_key or ""}
        tenant = client.post(
            "/consumer/data", json={"name": f"t{secrets.token_hex(4)}"}, headers=admin
        )
        key = tenant.json()["data"]["api_key"]
        created = client.post(
            "/customer/data",
            json={"name": "Ada", "email": "ada@example.com"},
            headers={
                "X-API-Key": key,
                "traceparent": f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01",
            },
        )
    assert created.status_code == 201
    with engine.connect() as connection:
        stored = connection.execute(
            text("SELECT traceparent FROM customer_events WHERE customer_id = :c"),
            {"c": created.json()["data"]["customer_id"]},
        ).scalar_one()
    assert stored is None


CLIENT = 3  # OTLP Span.SpanKind


def test_a_webhook_delivery_continues_the_events_trace_and_sends_its_traceparent(
    settings: Settings, tmp_path: Path, receiver: OtlpReceiver
) -> None:
    """API and `webhooks deliver` processes: the POST to the endpoint carries a
    ``traceparent`` of the client's trace, whose parent is the API's request span."""
    environment = otel_environment(receiver)
    webhook_settings = settings.updated(WEBHOOK_SETTINGS)
    endpoint_receiver = Receiver().start()
    processes: list[FintegrateProcess] = []
    try:
        api, api_url = serve_api(webhook_settings, tmp_path, extra_env=environment)
        processes.append(api)
        tenant = create_tenant_over_http(api_url, settings.auth.admin_api_key, "tracehooks")
        tenant["headers"] = {"X-API-Key": tenant["api_key"]}
        trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
        with httpx.Client(base_url=api_url, timeout=10) as client:
            endpoint_for(client, tenant, endpoint_receiver)
            created = client.post(
                "/customer/data",
                json={"name": "Ada"},
                headers={**tenant["headers"], "traceparent": f"00-{trace_id}-{client_span}-01"},
            )
        assert created.status_code == 201, created.text
        deliver = FintegrateProcess(
            "deliver", ["webhooks", "deliver"], webhook_settings, tmp_path, environment
        )
        processes.append(deliver.start())
        (item,) = endpoint_receiver.wait_for(1, timeout=60)

        def send_span() -> list[ReceivedSpan]:
            return [
                s for s in receiver.spans if s.trace_id == trace_id and s.name == "webhook send"
            ]

        assert wait_until(lambda: bool(send_span()), timeout=60), deliver.log_text()[-1500:]
        request = next(s for s in receiver.spans if s.name == "POST /customer/data")
    finally:
        for process in reversed(processes):
            process.terminate()
        endpoint_receiver.stop()
    (send,) = send_span()
    assert (send.service, send.kind, send.parent_span_id) == (
        "fintegrate-webhooks",
        CLIENT,
        request.span_id,
    )
    assert send.attributes["messaging.message.id"] == json.loads(item.body)["event_id"]
    assert item.headers["traceparent"] == f"00-{trace_id}-{send.span_id}-01"
