"""One IP budget per client across every route, and a forged X-Forwarded-For changes nothing."""

from __future__ import annotations

import re
import time

import httpx

from service.gateway.pages import EDGE_HEADER
from service.gateway.runner import Gateway
from tests.gateway.processes import ApiInstance, GatewayFactory, InstanceFactory, client_from
from tests.support.api import assert_envelope, description

BURST = 5
ROUTES = ("/customer/data", "/consumer/data", "/events", "/health", "/ready", "/nope")
FORGED = "203.0.113.77"


def small_budget(gateway_factory: GatewayFactory, instances: list[ApiInstance]) -> Gateway:
    """A gateway allowing each client IP a burst of BURST and one request a minute after."""
    return gateway_factory(
        [instance.url for instance in instances],
        gateway_rate_limit_per_minute=1,
        gateway_rate_limit_burst=BURST,
    )


def assert_gateway_429(response: httpx.Response) -> None:
    assert_envelope(response, 429)
    assert response.headers[EDGE_HEADER] == "gateway"
    assert response.headers["retry-after"] == "60"
    assert "per client IP across all routes" in description(response)


def test_one_budget_across_every_route(
    gateway_factory: GatewayFactory, instances: list[ApiInstance]
) -> None:
    gateway = small_budget(gateway_factory, instances)
    with client_from("127.0.0.2", gateway.url) as client:
        spent = [client.get("/health").status_code for _ in range(BURST)]
        assert spent == [200] * BURST
        for route in ROUTES:
            assert_gateway_429(client.get(route))
        assert_gateway_429(client.post("/customer/data", json={"name": "x"}))
    with client_from("127.0.0.3", gateway.url) as other:
        assert other.get("/health").status_code == 200  # another client, its own budget


def test_a_forged_forwarded_for_does_not_dodge_the_budget(
    gateway_factory: GatewayFactory, instances: list[ApiInstance]
) -> None:
    gateway = small_budget(gateway_factory, instances)
    with client_from("127.0.0.4", gateway.url) as client:
        for index in range(BURST):
            forged = {"X-Forwarded-For": f"198.51.100.{index}", "X-Real-Ip": f"10.0.0.{index}"}
            assert client.get("/health", headers=forged).status_code == 200
        assert_gateway_429(client.get("/health", headers={"X-Forwarded-For": FORGED}))
        assert_gateway_429(client.get("/health", headers={"X_Forwarded_For": FORGED}))


def client_addresses(instances: list[ApiInstance], marker: str) -> set[str]:
    """Client addresses in the instances' access logs for requests carrying ``marker``."""
    found = set()
    for instance in instances:
        for line in instance.log().splitlines():
            if marker in line:
                match = re.search(r"INFO:\s+([0-9a-f.:]+):\d+ - ", line)
                assert match, line
                found.add(match.group(1))
    return found


def test_the_api_sees_the_real_client_never_a_forged_one(
    gateway: Gateway, instances: list[ApiInstance]
) -> None:
    marker = "whoami-through-gateway"
    with client_from("127.0.0.5", gateway.url) as client:
        for forged in (FORGED, f"{FORGED}, 127.0.0.1", "unknown"):
            response = client.get(f"/health?{marker}", headers={"X-Forwarded-For": forged})
            assert response.status_code == 200
    assert client_addresses(instances, marker) == {"127.0.0.5"}


def test_a_direct_caller_cannot_forge_its_address_either(instances: list[ApiInstance]) -> None:
    marker = "whoami-direct"
    with client_from("127.0.0.6", instances[0].url) as client:
        response = client.get(f"/health?{marker}", headers={"X-Forwarded-For": FORGED})
        assert response.status_code == 200
    assert client_addresses(instances, marker) == {"127.0.0.6"}


def test_by_default_the_api_believes_no_forwarded_header(
    instance_factory: InstanceFactory,
) -> None:
    instance = instance_factory(trusted_proxy_ips="")  # the default: nobody is a proxy
    marker = "whoami-untrusting"
    with client_from("127.0.0.1", instance.url) as client:
        response = client.get(f"/health?{marker}", headers={"X-Forwarded-For": FORGED})
        assert response.status_code == 200
    assert client_addresses([instance], marker) == {"127.0.0.1"}


def test_the_budget_refills_at_its_rate(
    gateway_factory: GatewayFactory, instances: list[ApiInstance]
) -> None:
    gateway = gateway_factory(
        [instance.url for instance in instances],
        gateway_rate_limit_per_minute=120,  # a token every 0.5 s
        gateway_rate_limit_burst=2,
    )
    with client_from("127.0.0.6", gateway.url) as client:
        assert [client.get("/health").status_code for _ in range(2)] == [200, 200]
        refused = client.get("/health")
        assert_envelope(refused, 429)
        assert refused.headers["retry-after"] == "1"
        head = client.head("/health")
        assert head.status_code == 429 and head.content == b""
        time.sleep(0.6)
        assert client.get("/health").status_code == 200
        assert client.get("/health").status_code == 429
