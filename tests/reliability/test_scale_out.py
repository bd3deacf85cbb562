"""Two APIs, two relays and two workers on one database and one vhost, for a bounded run.

300 customers are created round-robin through two ``fintegrate serve`` processes; two
``fintegrate relay`` processes publish concurrently and two ``fintegrate consume`` workers
are started on the tenant's queue: they consume exclusively (per-customer order cannot hold
across competing consumers), so one handles everything and the other stands by. In this
normal path (no crash) every event must be published exactly once (``publish_try_count``
1, one handler call per event) and delivered.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from service.config import Settings
from tests.reliability.handlers import LOG_ENV, handler_lines
from tests.reliability.load import CustomerLoad
from tests.reliability.probes import deliver_states, receipts, report_figures
from tests.support.outbox import queue_depth, wait_until
from tests.support.processes import FintegrateProcess, serve_api

pytestmark = pytest.mark.slow

CUSTOMERS = 300
RELAY_TOTAL = re.compile(r"relay stopped: (\d+) published")
WORKER_TOTAL = re.compile(r"consumer stopped: (\d+) processed")


@pytest.fixture
def apis(isolated_settings: Settings, tmp_path: Path) -> Iterator[list[str]]:
    started = [serve_api(isolated_settings, tmp_path, f"api-{n}") for n in (1, 2)]
    yield [url for _, url in started]
    for process, _ in started:
        process.terminate()


@pytest.fixture
def api_url(apis: list[str]) -> str:
    """The first API: ``tenant`` is created through it."""
    return apis[0]


def publish_tries(engine: Engine, consumer_id: str) -> Counter[tuple[str, int]]:
    """How many events have each ``(publish_status, publish_try_count)``."""
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT publish_status, publish_try_count FROM customer_events"
                " WHERE consumer_id = :id"
            ),
            {"id": consumer_id},
        )
        return Counter((row.publish_status, row.publish_try_count) for row in rows)


def start_pipeline(
    settings: Settings, tenant: dict[str, Any], api_url: str, log_dir: Path
) -> list[FintegrateProcess]:
    """Two relays and two workers of the tenant's queue."""
    worker_settings = settings.updated({"api_url": api_url, "api_key": tenant["api_key"]})
    consume = ["consume", "--consumer", tenant["name"]]
    consume += ["--handler", "tests.reliability.handlers:record"]
    extra = {LOG_ENV: str(log_dir / "handled.log")}
    processes = [FintegrateProcess(f"relay-{n}", ["relay"], settings, log_dir) for n in (1, 2)]
    processes += [
        FintegrateProcess(f"worker-{n}", consume, worker_settings, log_dir, extra) for n in (1, 2)
    ]
    return [process.start() for process in processes]


def totals(processes: list[FintegrateProcess], pattern: re.Pattern[str]) -> list[int]:
    """The per-process totals logged at shutdown."""
    found = [pattern.search(process.log_text()) for process in processes]
    return [int(match.group(1)) for match in found if match]


def test_two_of_everything_publish_once_and_deliver_everything(
    isolated_settings: Settings,
    stack_engine: Engine,
    apis: list[str],
    tenant: dict[str, Any],
    tmp_path: Path,
) -> None:
    events = CUSTOMERS + 1  # + the tenant's consumer_created event
    processes = start_pipeline(isolated_settings, tenant, apis[1], tmp_path)
    started = time.monotonic()
    try:
        with CustomerLoad(apis, tenant["api_key"], CUSTOMERS) as load:
            assert load.wait(120)
        assert wait_until(
            lambda: len(receipts(stack_engine, tenant["consumer_id"])) == events, timeout=120
        )
        elapsed = time.monotonic() - started
        assert wait_until(
            lambda: queue_depth(isolated_settings.broker.url, tenant["queue_name"]) == 0
        )
    finally:
        exits = [process.terminate() for process in processes]

    handled = Counter(handler_lines(tmp_path / "handled.log"))
    assert exits == [0, 0, 0, 0]
    assert set(load.statuses) == {201}, load.summary()
    assert publish_tries(stack_engine, tenant["consumer_id"]) == {("published", 1): events}
    assert len(handled) == events and set(handled.values()) == {1}  # no event seen twice
    assert set(receipts(stack_engine, tenant["consumer_id"]).values()) == {1}
    assert deliver_states(stack_engine, tenant["consumer_id"]) == {"delivered": events}
    assert sorted(totals(processes[2:], WORKER_TOTAL)) == [0, events]  # one stood by
    report_figures(
        "scale_out_2x2x2",
        customers=CUSTOMERS,
        events=events,
        published_per_relay=totals(processes[:2], RELAY_TOTAL),
        processed_per_worker=totals(processes[2:], WORKER_TOTAL),
        handler_calls=sum(handled.values()),
        end_to_end_seconds=round(elapsed, 2),
    )
