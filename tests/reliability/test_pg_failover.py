"""PostgreSQL failover and restart under load, with a libpq multi-host URL everywhere.

A private primary (5491) and synchronous streaming standby (5492) from tests/support/pg_ha;
the API, two relays and the probes all use
``postgresql://…@127.0.0.1:5491,127.0.0.1:5492/…?target_session_attrs=read-write``.
Customers live (created, status changed) through the API while the primary is killed -9
and the standby promoted, or while the primary is restarted with ``pg_ctl restart -m fast``.
Then: every answer was a success or a 503 envelope (never a 500), the API is ready again
within 30 s, every acknowledged write is in the database, every committed event reaches
the tenant queue with each customer's events in commit order, and the relays' leases on
the surviving node are held by live relays with fencing tokens that never went back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, create_engine, text

from service.config import Settings, shipped_driver_url
from service.migrations import runner as migrations
from tests.reliability.load import CustomerLives
from tests.reliability.probes import publish_states, report_figures
from tests.support.outbox import drain_queue, wait_until
from tests.support.pg_ha import PgPair
from tests.support.processes import FintegrateProcess
from tests.support.rabbit_cluster import exclusive

# The bound covers waiting for the other worker's failover test to finish its turn.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
PG_LOCK = Path("/tmp/fintegrate-pg-ha.lock")

STATUSES = ("inactive", "active", "suspended")
RELAY = ["relay", "--poll-seconds", "0.2"]
READY_WITHIN_SECONDS = 30.0
LOAD_BEFORE_SECONDS = 5.0
LOAD_AFTER_SECONDS = 10.0


@pytest.fixture
def pg_pair() -> Iterator[PgPair]:
    """A fresh pair; one test at a time across pytest workers (the ports are fixed)."""
    with exclusive(PG_LOCK):
        pair = PgPair()
        try:
            yield pair.start()
        finally:
            pair.stop()


@pytest.fixture
def stack_settings(settings: Settings, pg_pair: PgPair) -> Settings:
    """The test's vhost and Redis, the pair's database (migrated) by its multi-host URL."""
    assert wait_until(pg_pair.replicating, 30), "the standby does not stream"
    bootstrap = create_engine(shipped_driver_url(pg_pair.primary.url()))
    migrations.apply(bootstrap)
    bootstrap.dispose()
    return settings.updated(
        {
            "database_url": shipped_driver_url(pg_pair.multi_host_url),
            "relay_max_backoff_seconds": 2.0,
            "relay_lease_ttl_seconds": 3.0,
            "relay_heartbeat_seconds": 0.5,
            "rate_limit_api_key_per_minute": 100_000,
            "rate_limit_api_key_burst": 100_000,
        }
    )


def seconds_until_ready(api_url: str, limit: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < limit + 5:
        try:
            if httpx.get(f"{api_url}/ready", timeout=3).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    return float("inf")


def fencing_tokens(engine: Engine) -> dict[int, int]:
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT partition_no, fencing_token FROM relay_partitions"))
        return {int(row.partition_no): int(row.fencing_token) for row in rows}


def lease_owners(engine: Engine) -> set[str | None]:
    """Owners of partitions whose lease is current, and None for any that is not."""
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT CASE WHEN lease_expires_at > now() THEN CAST(owner_id AS text) END AS o"
                " FROM relay_partitions"
            )
        )
        return {row.o for row in rows}


def live_relay_ids(engine: Engine, ttl: float) -> set[str]:
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT CAST(relay_id AS text) AS r FROM relay_members"
                " WHERE heartbeat_at > now() - make_interval(secs => :ttl)"
            ),
            {"ttl": ttl},
        )
        return {row.r for row in rows}


def committed_sequences(engine: Engine, consumer_id: str) -> dict[str, list[int]]:
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT customer_id, sequence FROM customer_events WHERE consumer_id = :c"
                " AND customer_id IS NOT NULL ORDER BY customer_id, sequence"
            ),
            {"c": consumer_id},
        )
        found: dict[str, list[int]] = {}
        for row in rows:
            found.setdefault(str(row.customer_id), []).append(int(row.sequence))
        return found


def arrived_sequences(settings: Settings, queue: str) -> dict[str, list[int]]:
    """Per customer, the sequences at the queue in arrival order (first arrivals only)."""
    seen: set[str] = set()
    arrived: dict[str, list[int]] = {}
    for _, _, body in drain_queue(settings.broker.url, queue):
        document = json.loads(body)
        if document["event_id"] in seen or document["customer_id"] is None:
            continue
        seen.add(document["event_id"])
        arrived.setdefault(document["customer_id"], []).append(document["sequence"])
    return arrived


def run_fault(
    settings: Settings,
    engine: Engine,
    api_url: str,
    tenant: dict[str, Any],
    log_dir: Path,
    fault: Callable[[], None],
) -> dict[str, Any]:
    """Load, ``fault()`` in the middle, more load; then wait until everything is published.

    Returns what the assertions need.
    """
    relays = [FintegrateProcess(f"relay{n}", RELAY, settings, log_dir).start() for n in (1, 2)]
    try:
        for relay in relays:
            relay.wait_for_log("relay started")
        with CustomerLives(api_url, tenant["api_key"], STATUSES) as load:
            time.sleep(LOAD_BEFORE_SECONDS)
            tokens_before = fencing_tokens(engine)
            fault()
            ready_seconds = seconds_until_ready(api_url, READY_WITHIN_SECONDS)
            time.sleep(LOAD_AFTER_SECONDS)
        events = sum(publish_states(engine, tenant["consumer_id"]).values())
        assert wait_until(
            lambda: publish_states(engine, tenant["consumer_id"]) == {"published": events}, 120
        ), publish_states(engine, tenant["consumer_id"])
        alive = [relay.alive for relay in relays]
        owners = lease_owners(engine)
        live = live_relay_ids(engine, settings.relay.lease_ttl_seconds)
        tokens_after = fencing_tokens(engine)
    finally:
        for relay in relays:
            relay.terminate()
    return {
        "load": load,
        "ready_seconds": ready_seconds,
        "alive": alive,
        "owners": owners,
        "live": live,
        "tokens_before": tokens_before,
        "tokens_after": tokens_after,
    }


def assert_nothing_lost_or_reordered(
    outcome: dict[str, Any], settings: Settings, engine: Engine, tenant: dict[str, Any]
) -> None:
    load: CustomerLives = outcome["load"]
    statuses = {status for status in load.statuses if isinstance(status, int)}
    assert statuses <= {200, 201, 503}, load.statuses  # never a 500
    assert load.bad_bodies == []
    assert load.statuses[201] > 10
    assert outcome["ready_seconds"] <= READY_WITHIN_SECONDS
    assert outcome["alive"] == [True, True]

    committed = committed_sequences(engine, tenant["consumer_id"])
    for customer, acknowledged in load.acknowledged.items():
        assert len(committed.get(customer, [])) >= acknowledged, customer  # nothing lost
    assert all(seqs == list(range(1, len(seqs) + 1)) for seqs in committed.values())
    assert arrived_sequences(settings, tenant["queue_name"]) == committed

    assert outcome["owners"] <= outcome["live"] and None not in outcome["owners"]
    before, after = outcome["tokens_before"], outcome["tokens_after"]
    assert all(after[partition] >= token for partition, token in before.items())


def test_primary_killed_and_standby_promoted_under_load(
    stack_settings: Settings,
    stack_engine: Engine,
    api_url: str,
    tenant: dict[str, Any],
    pg_pair: PgPair,
    tmp_path: Path,
) -> None:
    def kill_and_promote() -> None:
        pg_pair.primary.kill_9()
        time.sleep(2)  # the API answers 503 while no node accepts writes
        pg_pair.standby.promote()

    outcome = run_fault(stack_settings, stack_engine, api_url, tenant, tmp_path, kill_and_promote)

    assert_nothing_lost_or_reordered(outcome, stack_settings, stack_engine, tenant)
    with stack_engine.connect() as connection:  # the probes, too, moved to the new primary
        assert connection.execute(text("SELECT pg_is_in_recovery()")).scalar() is False
        assert connection.execute(text("SHOW port")).scalar() == str(pg_pair.standby.port)
    report_figures(
        "postgres primary killed, standby promoted",
        statuses=dict(outcome["load"].statuses),
        ready_seconds_after_promote=round(outcome["ready_seconds"], 1),
    )


def test_primary_restarted_fast_under_load(
    stack_settings: Settings,
    stack_engine: Engine,
    api_url: str,
    tenant: dict[str, Any],
    pg_pair: PgPair,
    tmp_path: Path,
) -> None:
    outcome = run_fault(
        stack_settings, stack_engine, api_url, tenant, tmp_path, pg_pair.primary.restart_fast
    )

    assert_nothing_lost_or_reordered(outcome, stack_settings, stack_engine, tenant)
    report_figures(
        "postgres primary restarted -m fast",
        statuses=dict(outcome["load"].statuses),
        ready_seconds_after_restart=round(outcome["ready_seconds"], 1),
    )
