"""PostgreSQL unreachable behind a TCP proxy: 503 envelopes within a bound, then recovery.

The API reaches the worker's database through a loopback proxy that refuses, resets or
blackholes connections (a blackhole accepts and never answers: a frozen server or a
partition). Every request must end with an answer (the HTTP client's timeout turns a hang
into a failure), 503 while the database is away, 201 again once it is back, without a
restart; and no customer row may exist without its ``customer_creation`` event.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from service.app import create_app
from service.config import Settings
from tests.reliability.load import REQUEST_TIMEOUT_SECONDS, CustomerLoad
from tests.reliability.probes import assert_unavailable, customers_without_event, report_figures
from tests.support.api import assert_envelope, create_tenant_through
from tests.support.live_server import LiveServer
from tests.support.outbox import wait_until
from tests.support.tcp_proxy import TcpProxy

FAULTS = ("refuse", "reset", "blackhole")


@pytest.fixture
def api(db_proxied_settings: Settings, db_proxy: TcpProxy) -> Iterator[httpx.Client]:
    """A live API whose database link runs through ``db_proxy`` (overrides the shared ``api``,
    whose server reaches the database directly)."""
    server = LiveServer(create_app(db_proxied_settings)).start()
    with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_SECONDS) as client:
        yield client
    db_proxy.pass_through()  # let stalled requests finish before uvicorn stops
    server.stop()


@pytest.fixture
def tenant(api: httpx.Client, admin_headers: dict[str, str]) -> dict[str, Any]:
    """A tenant made through the API under test (overrides the shared ``tenant``, which would
    start a second app only to make it)."""
    return create_tenant_through(api, admin_headers, "pg")


def timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def requests_while_down(api: httpx.Client, tenant: dict[str, Any]) -> list[tuple[Any, float]]:
    """A write, a read and /ready, twice each: the answers and their durations."""
    calls: list[Callable[[], httpx.Response]] = [
        lambda: api.post("/customer/data", json={"name": "x"}, headers=tenant["headers"]),
        lambda: api.get("/customer/data", headers=tenant["headers"]),
        lambda: api.get("/ready"),
    ]
    return [timed(call) for call in calls * 2]


def recovery_seconds(api: httpx.Client, tenant: dict[str, Any]) -> float:
    """Seconds until a customer can be created again (no restart, nothing reset)."""
    started = time.monotonic()

    def created() -> bool:
        response = api.post("/customer/data", json={"name": "back"}, headers=tenant["headers"])
        return response.status_code == 201

    assert wait_until(created, timeout=60, interval=0.1)
    return time.monotonic() - started


@pytest.mark.parametrize("fault", FAULTS)
def test_database_gone_answers_503_then_recovers_by_itself(
    api: httpx.Client, tenant: dict[str, Any], db_proxy: TcpProxy, engine: Engine, fault: str
) -> None:
    assert_envelope(api.post("/customer/data", json={"name": "a"}, headers=tenant["headers"]), 201)
    db_proxy.set_mode(fault)
    db_proxy.close_all()  # the server went away: pooled connections are cut too

    answers = requests_while_down(api, tenant)
    db_proxy.pass_through()
    recovered_after = recovery_seconds(api, tenant)

    for response, _ in answers:
        assert_unavailable(response)
    assert customers_without_event(engine, tenant["consumer_id"]) == (2, 0)
    report_figures(
        f"database_{fault}",
        answers_503=len(answers),
        slowest_503_seconds=round(max(seconds for _, seconds in answers), 2),
        recovery_seconds=round(recovered_after, 2),
    )


def test_database_frozen_under_open_connections_answers_503_within_a_bound(
    api: httpx.Client, tenant: dict[str, Any], db_proxy: TcpProxy, engine: Engine
) -> None:
    for _ in range(3):  # warm the pool: established connections that will go silent
        assert_envelope(api.get("/customer/data", headers=tenant["headers"]), 200)
    db_proxy.blackhole()

    answers = requests_while_down(api, tenant)
    db_proxy.pass_through()
    recovered_after = recovery_seconds(api, tenant)

    for response, _ in answers:
        assert_unavailable(response)
    assert customers_without_event(engine, tenant["consumer_id"]) == (1, 0)
    report_figures(
        "database_frozen_open_connections",
        slowest_503_seconds=round(max(seconds for _, seconds in answers), 2),
        recovery_seconds=round(recovered_after, 2),
    )


@pytest.mark.parametrize("fault", FAULTS)
def test_receipts_answer_503_while_the_database_is_away(
    api: httpx.Client, tenant: dict[str, Any], db_proxy: TcpProxy, fault: str
) -> None:
    receipt = {"event_id": str(uuid.uuid4()), "status": "processed"}
    missing = api.post("/events/confirm-delivery", json=receipt, headers=tenant["headers"])
    assert_envelope(missing, 404)  # warm: the pool holds a connection that will be cut
    db_proxy.set_mode(fault)
    db_proxy.close_all()

    answer, seconds = timed(
        lambda: api.post("/events/confirm-delivery", json=receipt, headers=tenant["headers"])
    )
    db_proxy.pass_through()

    assert_unavailable(answer)
    assert seconds < REQUEST_TIMEOUT_SECONDS
    assert_envelope(
        api.post("/events/confirm-delivery", json=receipt, headers=tenant["headers"]), 404
    )


@pytest.mark.slow
def test_database_flapping_under_load_never_splits_a_customer_from_its_event(
    api: httpx.Client, tenant: dict[str, Any], db_proxy: TcpProxy, engine: Engine
) -> None:
    url = str(api.base_url).rstrip("/")
    with CustomerLoad([url], tenant["api_key"], limit=400, pause_seconds=0.005) as load:
        for fault in (*FAULTS, "reset", "refuse"):
            time.sleep(1.0)
            db_proxy.set_mode(fault)
            db_proxy.close_all()
            time.sleep(1.5)
            db_proxy.pass_through()
        load.wait(120)

    customers, orphans = customers_without_event(engine, tenant["consumer_id"])
    assert set(load.statuses) <= {201, 503}, load.summary()
    assert orphans == 0
    assert load.created <= customers <= load.created + load.statuses.count(503)
    report_figures(
        "database_flapping_load",
        answers=load.summary(),
        customers=customers,
        slowest_answer_seconds=round(max(load.latencies), 2),
    )
