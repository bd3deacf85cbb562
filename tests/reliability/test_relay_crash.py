"""``kill -9`` of a running ``fintegrate relay``, ten rounds under load: nothing is lost.

A backlog (inserted rows) plus customers created through the API during the rounds keep
the relay busy, so SIGKILL lands mid-batch: after the broker confirmed some messages and
before the transaction marking them published commits. Those messages are published
again by the next relay: duplicates, at most one batch per crash, and no loss. A worker
then consumes everything: each duplicate arrives after its original (same aggregate, later
in the queue) and is skipped as a stale duplicate with a ``received`` receipt, so the
handler sees every event exactly once.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from service.config import Settings
from tests.reliability.handlers import LOG_ENV, handler_lines
from tests.reliability.load import CustomerLoad
from tests.reliability.probes import publish_states, receipts, report_figures
from tests.support.outbox import insert_events, queue_depth, wait_until
from tests.support.processes import FintegrateProcess

pytestmark = pytest.mark.slow

ROUNDS = 10
BATCH = 50
BACKLOG = 1500
LOAD_LIMIT = 300
SEED = 7
RELAY = ["relay", "--poll-seconds", "0.2"]
RELAY_STARTED = "relay started"
WORKER_STARTED = "consuming customer_notification_"


@pytest.fixture
def stack_settings(isolated_settings: Settings) -> Settings:
    return isolated_settings.updated({"relay_batch_size": BATCH})


def published_count(engine: Engine, tenant: dict[str, Any]) -> int:
    return publish_states(engine, tenant["consumer_id"]).get("published", 0)


def wait_for_progress(engine: Engine, tenant: dict[str, Any]) -> None:
    """Return once the relay marked at least one more batch published."""
    before = published_count(engine, tenant)
    wait_until(lambda: published_count(engine, tenant) > before, timeout=30, interval=0.02)


def kill_rounds(
    settings: Settings, engine: Engine, tenant: dict[str, Any], log_dir: Path
) -> list[int]:
    """Start a relay, SIGKILL it at a random moment while it publishes, ``ROUNDS`` times.

    Returns the duplicates each crash added (messages in the queue minus rows marked).
    """
    chooser = random.Random(SEED)
    duplicates_per_crash, duplicates_before = [], 0
    for round_number in range(ROUNDS):
        relay = FintegrateProcess(f"relay-{round_number}", RELAY, settings, log_dir).start()
        try:
            relay.wait_for_log(RELAY_STARTED)
            wait_for_progress(engine, tenant)
            time.sleep(chooser.uniform(0.0, 0.4))
        finally:
            relay.kill()
        time.sleep(0.5)  # frames already sent reach the queue
        duplicates = queue_depth(settings.broker.url, tenant["queue_name"]) - published_count(
            engine, tenant
        )
        duplicates_per_crash.append(duplicates - duplicates_before)
        duplicates_before = duplicates
    return duplicates_per_crash


def drain_with_relay(
    settings: Settings, engine: Engine, tenant: dict[str, Any], log_dir: Path
) -> float:
    """A last relay publishes what is left and stops on SIGTERM; seconds it took."""
    started = time.monotonic()
    relay = FintegrateProcess("relay-final", RELAY, settings, log_dir).start()
    try:
        relay.wait_for_log(RELAY_STARTED)
        assert wait_until(
            lambda: set(publish_states(engine, tenant["consumer_id"])) == {"published"},
            timeout=120,
        )
        elapsed = time.monotonic() - started
    finally:
        assert relay.terminate() == 0, relay.log_text()[-2000:]
    return elapsed


def consume_everything(
    settings: Settings, engine: Engine, tenant: dict[str, Any], log_dir: Path, events: int
) -> list[str]:
    """Run a worker until every event has a receipt and the queue is empty; handler lines."""
    handler_log = log_dir / "handled.log"
    worker_settings = settings.updated({"api_key": tenant["api_key"]})
    worker = FintegrateProcess(
        "worker",
        ["consume", "--consumer", tenant["name"], "--handler", "tests.reliability.handlers:record"],
        worker_settings,
        log_dir,
        {LOG_ENV: str(handler_log)},
    ).start()
    try:
        assert wait_until(
            lambda: (
                len(receipts(engine, tenant["consumer_id"])) >= events
                and queue_depth(settings.broker.url, tenant["queue_name"]) == 0
            ),
            timeout=180,
            interval=0.5,
        ), worker.log_text()[-2000:]
        time.sleep(1.0)  # the last unacked duplicates are confirmed and acked
    finally:
        assert worker.terminate() == 0, worker.log_text()[-2000:]
    return handler_lines(handler_log)


def test_relay_killed_mid_batch_ten_times_loses_nothing(
    stack_settings: Settings,
    stack_engine: Engine,
    api_url: str,
    tenant: dict[str, Any],
    tmp_path: Path,
) -> None:
    insert_events(stack_engine, tenant["consumer_id"], count=BACKLOG)
    worker_settings = stack_settings.updated({"api_url": api_url})
    with CustomerLoad([api_url], tenant["api_key"], LOAD_LIMIT, pause_seconds=0.01) as load:
        duplicates_per_crash = kill_rounds(stack_settings, stack_engine, tenant, tmp_path)
    drain_seconds = drain_with_relay(stack_settings, stack_engine, tenant, tmp_path)
    events = sum(publish_states(stack_engine, tenant["consumer_id"]).values())
    in_queue = queue_depth(stack_settings.broker.url, tenant["queue_name"])
    handled = consume_everything(worker_settings, stack_engine, tenant, tmp_path, events)
    receipt_counts = receipts(stack_engine, tenant["consumer_id"])

    assert set(load.statuses) == {201}
    assert events == BACKLOG + 1 + load.created  # + the tenant's consumer_created event
    assert len(set(handled)) == events  # every committed event was published and consumed
    assert len(handled) == events  # once each: the duplicates were skipped as stale
    assert all(0 <= extra <= BATCH for extra in duplicates_per_crash), duplicates_per_crash
    assert in_queue - events == sum(duplicates_per_crash)
    assert set(receipt_counts.values()) == {1}  # one receipt per event and status
    processed = {event for event, status in receipt_counts if status == "processed"}
    stale = {event for event, status in receipt_counts if status == "received"}
    assert len(processed) == events and stale <= processed
    assert len(stale) <= in_queue - events  # only duplicated events got a stale receipt
    assert {status for _, status in receipt_counts} <= {"processed", "received"}
    report_figures(
        "relay_kill_9",
        rounds=ROUNDS,
        batch_size=BATCH,
        events=events,
        messages_published=in_queue,
        duplicates_per_crash=duplicates_per_crash,
        crashes_with_duplicates=sum(1 for extra in duplicates_per_crash if extra),
        handler_calls=len(handled),
        receipts=len(receipt_counts),
        stale_duplicate_receipts=len(stale),
        final_drain_seconds=round(drain_seconds, 2),
    )
