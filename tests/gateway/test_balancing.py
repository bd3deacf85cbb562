"""Health-checked load balancing: both instances serve, a killed one is out within the
health interval, reads caught by a dead instance are retried on another, writes are not."""

from __future__ import annotations

import time

import httpx

from service.gateway.pages import EDGE_HEADER
from tests.gateway.conftest import GatewayFactory, InstanceFactory
from tests.gateway.processes import ApiInstance, free_port
from tests.support.api import assert_envelope

INTERVAL_SECONDS = 1.0


def served_by(instance: ApiInstance, marker: str) -> int:
    return sum(marker in line for line in instance.log().splitlines())


def test_both_instances_serve(
    gateway_factory: GatewayFactory, instances: list[ApiInstance]
) -> None:
    gateway = gateway_factory([instance.url for instance in instances])
    marker = "balanced-probe"
    for _ in range(20):
        assert httpx.get(f"{gateway.url}/health?{marker}").status_code == 200
    counts = [served_by(instance, marker) for instance in instances]
    assert sum(counts) == 20
    assert min(counts) >= 5, counts


def test_an_instance_killed_9_is_out_within_the_health_interval(
    gateway_factory: GatewayFactory, instance_factory: InstanceFactory
) -> None:
    doomed, survivor = instance_factory(), instance_factory()
    gateway = gateway_factory(
        [doomed.url, survivor.url], gateway_health_interval_seconds=INTERVAL_SECONDS
    )
    assert httpx.get(f"{gateway.url}/health").status_code == 200
    doomed.kill()
    # Before the health check notices, reads that hit the dead instance are retried.
    assert [httpx.get(f"{gateway.url}/health").status_code for _ in range(6)] == [200] * 6
    time.sleep(INTERVAL_SECONDS + 1.5)  # one interval, one health timeout, some slack
    with httpx.Client(base_url=gateway.url) as client:
        answers = [client.post("/customer/data", json={"name": "after kill"}) for _ in range(15)]
        answers += [client.get("/health") for _ in range(15)]
    # Every write reached the survivor (401 from the API: no key), none was a gateway 5xx.
    assert [a.status_code for a in answers] == [401] * 15 + [200] * 15
    assert not any(EDGE_HEADER in a.headers for a in answers)


def test_reads_are_retried_on_another_instance_writes_are_not(
    gateway_factory: GatewayFactory, instances: list[ApiInstance]
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    # A long interval keeps the dead instance in rotation: every request may land on it.
    gateway = gateway_factory([dead, instances[0].url], gateway_health_interval_seconds=600.0)
    with httpx.Client(base_url=gateway.url) as client:
        reads = [client.get("/health").status_code for _ in range(10)]
        writes = [client.post("/customer/data", json={"name": "w"}) for _ in range(10)]
    assert reads == [200] * 10
    refused = [w for w in writes if w.status_code == 502]
    assert refused and len(refused) < len(writes), [w.status_code for w in writes]
    for answer in refused:
        assert_envelope(answer, 502)
    assert {w.status_code for w in writes} == {401, 502}  # the rest reached the live one
