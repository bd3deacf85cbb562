"""Health-checked load balancing: both instances serve, a killed one is out within the
health interval, reads caught by a dead instance are retried on another, writes are not."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from service.gateway.pages import EDGE_HEADER
from tests.gateway.processes import ApiInstance, GatewayFactory, InstanceFactory
from tests.support.api import assert_envelope
from tests.support.ports import free_port

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


def test_the_gateway_keeps_its_connections_to_an_instance_alive(
    gateway_factory: GatewayFactory, instance_factory: InstanceFactory
) -> None:
    """16 requests in flight at once reuse kept-alive connections, not one per request."""
    instance = instance_factory()
    # Each health check opens and closes a connection of its own: none during the run.
    gateway = gateway_factory([instance.url], gateway_health_interval_seconds=300)
    in_flight, total = 16, 800
    closed_before = closed_connections(instance.port)

    async def drive() -> list[int]:
        limits = httpx.Limits(max_connections=in_flight)
        # The queued requests wait for one of the 16 connections: past httpx's 5 s pool
        # timeout on a busy machine, which is not what this test is about.
        timeout = httpx.Timeout(5.0, pool=120.0)
        async with httpx.AsyncClient(
            base_url=gateway.url, limits=limits, timeout=timeout
        ) as client:
            requests = [client.get("/health") for _ in range(total)]
            return [response.status_code for response in await asyncio.gather(*requests)]

    assert asyncio.run(drive()) == [200] * total
    closed = closed_connections(instance.port) - closed_before
    # Measured: 1-2 with the pool kept; 26 with Go's default of 2 idle connections per host.
    assert closed <= in_flight // 2, f"{closed} connections closed in {total} requests"


def closed_connections(port: int) -> int:
    """Loopback TCP connections to or from ``port`` in TIME-WAIT (closed within 60 s)."""
    time_wait, hex_port = "06", f"{port:04X}"
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(
        1
        for row in rows
        if (fields := row.split())[3] == time_wait
        and hex_port in (fields[1].split(":")[1], fields[2].split(":")[1])
    )
