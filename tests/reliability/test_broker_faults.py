"""RabbitMQ reset, blackholed, slowed and refused during a steady load, through a TCP proxy.

The API, a ``fintegrate relay`` and a ``fintegrate consume`` worker all reach the broker
through one loopback proxy. While customers are created at a steady pace the proxy cycles
through faults (each cutting the open connections, like a broker restart would). The API
must answer 201 throughout (it never waits on the broker), and once the link is back every
event must be published and confirmed by the worker exactly once in the receipts: one
``processed`` receipt per event, plus a ``received`` one for an event whose copy (an ack
lost with a cut connection, a publish repeated) arrived after it was delivered and was
skipped as a stale duplicate.
(The variant that really stops RabbitMQ with ``rabbitmqctl stop_app`` is C's disruptive
test in tests/service/messaging/publish/test_broker_outage.py.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from service.config import Settings
from tests.reliability.handlers import LOG_ENV, handler_lines
from tests.reliability.load import CustomerLoad
from tests.reliability.probes import (
    deliver_states,
    publish_states,
    receipts,
    report_figures,
)
from tests.support.outbox import queue_depth, wait_until
from tests.support.processes import FintegrateProcess
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow

LOAD_LIMIT = 500
# (mode, seconds, cut the open connections first). A blackhole always starts with a cut:
# the proxy drops bytes inside a live TCP stream, which no real network does (TCP would
# retransmit them or break the connection), so an uncut blackhole only corrupts AMQP framing.
FAULT_CYCLE = (
    ("reset", 2.0, True),
    ("blackhole", 3.0, True),
    ("delay", 2.0, False),
    ("refuse", 2.0, True),
)
HEALTHY_SECONDS = 1.5


@pytest.fixture
def broker_proxy(tcp_proxy_factory: Callable[[str, int], TcpProxy]) -> TcpProxy:
    return tcp_proxy_factory("127.0.0.1", 5672)


@pytest.fixture
def stack_settings(isolated_settings: Settings, broker_proxy: TcpProxy) -> Settings:
    """The API, relay and worker reach the broker through ``broker_proxy``."""
    url = broker_proxy.url_for(isolated_settings.broker.url)
    return isolated_settings.updated({"rabbitmq_url": url})


def cycle_faults(proxy: TcpProxy) -> None:
    for mode, seconds, cut in FAULT_CYCLE:
        time.sleep(HEALTHY_SECONDS)
        proxy.set_mode(mode, delay_seconds=0.3)
        if cut:
            proxy.close_all()
        time.sleep(seconds)
        proxy.pass_through()


def processed(engine: Engine, consumer_id: str) -> set[str]:
    """The events with a ``processed`` receipt."""
    return {event for event, status in receipts(engine, consumer_id) if status == "processed"}


def test_broker_faults_during_steady_load_lose_nothing(
    stack_settings: Settings,
    isolated_settings: Settings,
    broker_proxy: TcpProxy,
    stack_engine: Engine,
    api_url: str,
    tenant: dict[str, Any],
    tmp_path: Path,
) -> None:
    handler_log = tmp_path / "handled.log"
    worker_settings = stack_settings.updated({"api_url": api_url, "api_key": tenant["api_key"]})
    relay = FintegrateProcess("relay", ["relay"], stack_settings, tmp_path).start()
    worker = FintegrateProcess(
        "worker",
        ["consume", "--consumer", tenant["name"], "--handler", "tests.reliability.handlers:record"],
        worker_settings,
        tmp_path,
        {LOG_ENV: str(handler_log)},
    ).start()
    try:
        with CustomerLoad([api_url], tenant["api_key"], LOAD_LIMIT, pause_seconds=0.02) as load:
            cycle_faults(broker_proxy)
            assert load.wait(120)
        recovery_started = time.monotonic()
        events = load.created + 1  # + the tenant's consumer_created event
        assert wait_until(
            lambda: len(processed(stack_engine, tenant["consumer_id"])) == events, timeout=120
        ), relay.log_text()[-1500:] + worker.log_text()[-1500:]
        settled_after = time.monotonic() - recovery_started
    finally:
        relay_exit, worker_exit = relay.terminate(), worker.terminate()

    handled = handler_lines(handler_log)
    assert (relay_exit, worker_exit) == (0, 0)
    assert set(load.statuses) == {201}, load.summary()
    assert publish_states(stack_engine, tenant["consumer_id"]) == {"published": events}
    assert deliver_states(stack_engine, tenant["consumer_id"]) == {"delivered": events}
    recorded = receipts(stack_engine, tenant["consumer_id"])
    assert set(recorded.values()) == {1}  # one receipt per event and status
    assert {status for _, status in recorded} <= {"processed", "received"}
    assert len(set(handled)) == events
    assert queue_depth(isolated_settings.broker.url, tenant["queue_name"]) == 0
    report_figures(
        "broker_faults_steady_load",
        requests=len(load.statuses),
        answers=load.summary(),
        slowest_201_seconds=round(max(load.latencies), 2),
        events=events,
        handler_calls=len(handled),
        redelivered_duplicates=len(handled) - events,
        stale_duplicate_receipts=len(recorded) - events,
        settled_seconds_after_load=round(settled_after, 2),
    )
