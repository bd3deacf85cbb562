"""Every answer of the gateway itself is an envelope; the API's own answers pass untouched."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import httpx

from service.config import Settings
from service.gateway.pages import EDGE_HEADER
from service.gateway.runner import Gateway
from tests.gateway.processes import ApiInstance, GatewayFactory, InstanceFactory
from tests.support.api import assert_envelope, create_tenant_over_http, description
from tests.support.ports import free_port
from tests.support.tcp_proxy import TcpProxy


def assert_edge(response: httpx.Response, status: int) -> str:
    """The gateway answered ``status`` itself, as an envelope; returns the description."""
    assert_envelope(response, status)
    assert response.headers[EDGE_HEADER] == "gateway"
    return description(response)


def assert_from_api(response: httpx.Response, status: int) -> str:
    """An API instance answered ``status`` (its request id, no gateway marker)."""
    assert_envelope(response, status)
    assert EDGE_HEADER not in response.headers
    assert response.headers["x-request-id"]
    return description(response)


def test_unknown_path_is_a_404_envelope_naming_the_routes(gateway: Gateway) -> None:
    for path in ("/nope", "/", "/customer-data/../x", "/metrics"):
        text = assert_edge(httpx.get(f"{gateway.url}{path}"), 404)
        assert "/customer/" in text and "No route" in text


def test_the_apis_own_404_passes_untouched(gateway: Gateway, stack_settings: Settings) -> None:
    tenant = create_tenant_over_http(gateway.url, stack_settings.auth.admin_api_key, "gw404")
    response = httpx.get(
        f"{gateway.url}/customer/data/{uuid.uuid4()}", headers={"X-API-Key": tenant["api_key"]}
    )
    assert "customer" in assert_from_api(response, 404).lower()


def test_the_apis_per_key_429_keeps_its_headers(gateway: Gateway, stack_settings: Settings) -> None:
    admin = {"X-Admin-Key": str(stack_settings.auth.admin_api_key)}
    tenant = create_tenant_over_http(gateway.url, stack_settings.auth.admin_api_key, "gw429")
    limits = {"rate_limit_per_minute": 1, "rate_limit_burst": 2}
    patched = httpx.patch(
        f"{gateway.url}/consumer/data/{tenant['consumer_id']}", json=limits, headers=admin
    )
    assert patched.status_code == 200, patched.text
    key = {"X-API-Key": tenant["api_key"]}
    answers = [httpx.get(f"{gateway.url}/customer/data", headers=key) for _ in range(6)]
    limited = [answer for answer in answers if answer.status_code == 429]
    assert limited, [answer.status_code for answer in answers]
    text = assert_from_api(limited[0], 429)
    assert "API key" in text
    assert int(limited[0].headers["retry-after"]) >= 1
    assert limited[0].headers["x-ratelimit-limit"] == "2"
    assert limited[0].headers["x-ratelimit-remaining"] == "0"


def test_the_apis_own_503_passes_untouched(
    gateway_factory: GatewayFactory,
    instance_factory: InstanceFactory,
    stack_settings: Settings,
    tcp_proxy_factory: Callable[[str, int], TcpProxy],
) -> None:
    database = httpx.URL(stack_settings.database.url.replace("+psycopg2", ""))
    proxy = tcp_proxy_factory(database.host, database.port or 5432)
    instance = instance_factory(database_url=proxy.url_for(stack_settings.database.url))
    gateway = gateway_factory([instance.url])
    proxy.refuse()
    proxy.close_all()
    response = httpx.get(f"{gateway.url}/ready", timeout=30)
    assert "Not ready" in assert_from_api(response, 503)
    assert response.headers["retry-after"] == "5"


def test_502_envelope_when_an_instance_refuses(gateway_factory: GatewayFactory) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    gateway = gateway_factory([dead], gateway_health_interval_seconds=600.0)
    text = assert_edge(httpx.post(f"{gateway.url}/customer/data", json={"name": "x"}), 502)
    assert "retry a write only after checking" in text
    assert_edge(httpx.get(f"{gateway.url}/health"), 502)  # reads retried, still nobody


def test_503_envelope_when_no_instance_is_up(gateway_factory: GatewayFactory) -> None:
    dead = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    gateway = gateway_factory(dead, gateway_health_interval_seconds=0.2)
    deadline = time.monotonic() + 15
    while httpx.get(f"{gateway.url}/health").status_code != 503 and time.monotonic() < deadline:
        time.sleep(0.1)
    for method, path in (("GET", "/health"), ("POST", "/customer/data"), ("GET", "/events")):
        response = httpx.request(
            method, f"{gateway.url}{path}", json={} if method == "POST" else None
        )
        assert "No API instance is up" in assert_edge(response, 503)
        assert response.headers["retry-after"] == "1"


def test_504_envelope_when_an_instance_is_too_slow(
    gateway_factory: GatewayFactory,
    instances: list[ApiInstance],
    tcp_proxy_factory: Callable[[str, int], TcpProxy],
) -> None:
    proxy = tcp_proxy_factory("127.0.0.1", instances[0].port)
    gateway = gateway_factory(
        [proxy.url_for(instances[0].url)],
        gateway_upstream_timeout_seconds=1.0,
        gateway_health_interval_seconds=600.0,
    )
    assert httpx.get(f"{gateway.url}/health").status_code == 200
    proxy.blackhole()
    started = time.monotonic()
    response = httpx.post(f"{gateway.url}/customer/data", json={"name": "slow"}, timeout=30)
    assert "did not answer within 1 s" in assert_edge(response, 504)
    assert time.monotonic() - started < 10
