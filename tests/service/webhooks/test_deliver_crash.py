"""kill -9 of `fintegrate webhooks deliver` mid-stream: nothing is lost, and each customer's
events reach the endpoint in sequence order at their first delivery."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from service.config import Settings
from tests.support.ports import free_port
from tests.support.processes import FintegrateProcess
from tests.support.receiver import Received
from tests.support.webhooks import customers_with_events, endpoint_for, nothing_left


def slow_ok(item: Received, index: int) -> tuple[int, dict[str, str], bytes]:
    time.sleep(0.05)
    return 200, {}, b"ok"


def test_kill_9_loses_nothing_and_keeps_each_customer_in_order(
    client: TestClient,
    create_consumer: Callable[..., Any],
    receiver_factory: Any,
    settings: Settings,
    engine: Engine,
    tmp_path: Path,
) -> None:
    receiver = receiver_factory(slow_ok)
    tenant = create_consumer()
    endpoint_for(
        client, tenant, receiver, event_types=["customer_creation", "customer_status_change"]
    )
    made = customers_with_events(client, tenant, customers=6, changes=4)
    total = sum(len(sequences) for sequences in made.values())
    process_settings = settings.updated({"webhook_timeout_seconds": 2.0})
    args = ["webhooks", "deliver", "--concurrency", "2"]
    first = FintegrateProcess("deliver-1", args, process_settings, tmp_path).start()
    try:
        receiver.wait_for(total // 3, timeout=60)
        first.kill()
    finally:
        if first.alive:
            first.kill()
    assert len(receiver.received) < total, "the first process finished before the kill"
    port = free_port()
    second_args = [*args, "--metrics-port", str(port)]
    second = FintegrateProcess("deliver-2", second_args, process_settings, tmp_path).start()
    try:
        deadline = time.monotonic() + 90
        done = nothing_left(engine)
        while not done():
            assert time.monotonic() < deadline, second.log_text()
            time.sleep(0.2)
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    finally:
        second.terminate()
    assert 'fintegrate_webhook_attempts_total{result="succeeded"}' in metrics
    firsts: dict[str, list[int]] = {}
    for item in receiver.received:
        body = json.loads(item.body)
        order = firsts.setdefault(body["customer_id"], [])
        if body["sequence"] not in order:
            order.append(body["sequence"])
    assert firsts == made
