"""``kill -9`` of ``fintegrate consume`` while its handlers run: redelivered, processed once.

The worker runs the handlers of different customers side by side, so the kill may interrupt
several; each of them is handled again after the restart, every other event exactly once.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from service.config import Settings
from service.messaging.publish.relay import OutboxRelay
from tests.reliability.handlers import LOG_ENV, SLOW_ENV, handler_lines
from tests.reliability.probes import deliver_states, event_ids, receipts, report_figures
from tests.support.api import create_tenant_over_http
from tests.support.outbox import queue_depth, wait_until
from tests.support.processes import FintegrateProcess
from tests.support.worker import create_customers

CUSTOMERS = 3
PREFETCH = "4"
WORKER_STARTED = "consuming customer_notification_"


@pytest.fixture
def tenant(live_server: str, api: httpx.Client, settings: Settings) -> dict[str, Any]:
    """A tenant with ``CUSTOMERS`` customers whose events are all in its queue.

    Overrides the reliability ``tenant`` (on a stack of its own): this test's workers and
    relay run on the worker's database behind ``live_server``.
    """
    data = create_tenant_over_http(live_server, settings.auth.admin_api_key, "kill")
    create_customers(api, data, CUSTOMERS)
    return data


def start_worker(
    settings: Settings, tenant: dict[str, Any], log_dir: Path, name: str, handler_seconds: float
) -> FintegrateProcess:
    arguments = ["consume", "--consumer", tenant["name"], "--prefetch", PREFETCH]
    arguments += ["--handler", "tests.reliability.handlers:slow_record"]
    extra = {LOG_ENV: str(log_dir / "handled.log"), SLOW_ENV: str(handler_seconds)}
    worker = FintegrateProcess(name, arguments, settings, log_dir, extra).start()
    worker.wait_for_log(WORKER_STARTED)
    return worker


def test_worker_killed_mid_message_redelivers_and_processes_once(
    settings: Settings, engine: Engine, live_server: str, tenant: dict[str, Any], tmp_path: Path
) -> None:
    OutboxRelay.from_settings(settings, engine, threading.Event()).drain()
    events = event_ids(engine, tenant["consumer_id"])
    queue = tenant["queue_name"]
    worker_settings = settings.updated({"api_url": live_server, "api_key": tenant["api_key"]})
    assert queue_depth(settings.broker.url, queue) == len(events)

    doomed = start_worker(worker_settings, tenant, tmp_path, "worker-killed", 60)
    try:
        assert wait_until(lambda: bool(handler_lines(tmp_path / "handled.log")), timeout=30)
    finally:
        doomed.kill()
    interrupted = {line.removeprefix("start ") for line in handler_lines(tmp_path / "handled.log")}
    assert interrupted and interrupted <= set(events)
    assert receipts(engine, tenant["consumer_id"]) == Counter()
    assert wait_until(lambda: queue_depth(settings.broker.url, queue) == len(events))

    survivor = start_worker(worker_settings, tenant, tmp_path, "worker-restarted", 0.05)
    try:
        assert wait_until(lambda: len(receipts(engine, tenant["consumer_id"])) == len(events))
    finally:
        assert survivor.terminate() == 0, survivor.log_text()[-2000:]

    lines = Counter(handler_lines(tmp_path / "handled.log"))
    assert lines == Counter(
        {f"start {event}": 2 if event in interrupted else 1 for event in events}
        | {f"done {event}": 1 for event in events}
    )  # the interrupted ones were redelivered after the crash
    assert receipts(engine, tenant["consumer_id"]) == Counter(
        {(event, "processed"): 1 for event in events}
    )
    assert deliver_states(engine, tenant["consumer_id"]) == {"delivered": len(events)}
    assert queue_depth(settings.broker.url, queue) == 0
    report_figures(
        "consumer_kill_9",
        events=len(events),
        handler_starts=sum(count for line, count in lines.items() if line.startswith("start")),
        processed_receipts=len(events),
    )
