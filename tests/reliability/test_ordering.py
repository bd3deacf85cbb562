"""One customer's events reach its tenant queue in commit order, whatever the relays go through.

2 and 4 ``fintegrate relay`` processes publish while 200+ customers each go through a
create, five status changes and a delete (every call after the last answered) and, the
whole time, chaos: a relay killed -9 and restarted every few seconds, the relays' broker
connections closed through the management API, and a window in which the tenant queue is
unbound (publishes are unroutable, fail, back off, then succeed). Then, at the queue,
judged on first arrivals (a consumer deduplicating by event_id sees exactly these): every
customer's events are in commit order, none is missing, and sequences are contiguous.
"""

from __future__ import annotations

import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import Engine, text

from service.config import Settings
from service.messaging import topology
from tests.reliability.probes import publish_states, report_figures
from tests.support.api import create_tenant_over_http
from tests.support.outbox import drain_queue, wait_until
from tests.support.processes import FintegrateProcess, serve_api

pytestmark = pytest.mark.slow

CUSTOMERS = 210
STATUSES = ("inactive", "suspended", "active", "inactive", "suspended")
EVENTS_PER_CUSTOMER = 2 + len(STATUSES)
CLIENT_THREADS = 12
CHAOS_EVERY_SECONDS = 2.5
UNBOUND_SECONDS = 1.5
RELAY = ["relay", "--poll-seconds", "0.2"]


@pytest.fixture
def stack_settings(isolated_settings: Settings) -> Settings:
    return isolated_settings.updated(
        {
            "relay_batch_size": 50,
            "relay_max_backoff_seconds": 2.0,
            "relay_lease_ttl_seconds": 3.0,
            "relay_heartbeat_seconds": 0.5,
            "rate_limit_api_key_per_minute": 100_000,
            "rate_limit_api_key_burst": 100_000,
        }
    )


class Broker:
    """The management API of the test's vhost: connections, bindings."""

    def __init__(self, settings: Settings) -> None:
        assert settings.broker.management_url
        self.base = settings.broker.management_url.rstrip("/")
        self.vhost = settings.broker.url.rsplit("/", 1)[1]

    def close_connections(self) -> int:
        connections = httpx.get(f"{self.base}/api/vhosts/{self.vhost}/connections", timeout=10)
        closed = 0
        for connection in connections.json():
            name = quote(connection["name"], safe="")
            httpx.delete(f"{self.base}/api/connections/{name}", timeout=10)
            closed += 1
        return closed

    def unbind(self, consumer_name: str) -> list[str]:
        queue = topology.queue_name(consumer_name)
        keys = topology.queue_bindings(consumer_name)
        for key in keys:
            url = (
                f"{self.base}/api/bindings/{self.vhost}/e/{topology.EXCHANGE}/q/{queue}/"
                f"{quote(key, safe='')}"
            )
            httpx.delete(url, timeout=10)
        return list(keys)

    def bind(self, consumer_name: str, keys: list[str]) -> None:
        queue = topology.queue_name(consumer_name)
        for key in keys:
            httpx.post(
                f"{self.base}/api/bindings/{self.vhost}/e/{topology.EXCHANGE}/q/{queue}",
                json={"routing_key": key},
                timeout=10,
            ).raise_for_status()


class Chaos:
    """Kills and restarts relays, closes broker connections, unbinds the queue, in turns."""

    def __init__(self, relays: list[FintegrateProcess], broker: Broker, tenant: str) -> None:
        self.relays = relays
        self.broker = broker
        self.tenant = tenant
        self.stop = threading.Event()
        self.counts = {"kills": 0, "connection_closes": 0, "unbound_windows": 0}
        self.random = random.Random(11)
        self.thread = threading.Thread(target=self._run, name="chaos", daemon=True)

    def _run(self) -> None:
        turn = 0
        while not self.stop.wait(CHAOS_EVERY_SECONDS):
            action = (self._kill_one, self._close_connections, self._unbound_window)[turn % 3]
            action()
            turn += 1

    def _kill_one(self) -> None:
        victim = self.random.choice(self.relays)
        victim.kill()
        victim.start()
        self.counts["kills"] += 1

    def _close_connections(self) -> None:
        self.broker.close_connections()
        self.counts["connection_closes"] += 1

    def _unbound_window(self) -> None:
        keys = self.broker.unbind(self.tenant)
        time.sleep(UNBOUND_SECONDS)
        self.broker.bind(self.tenant, keys)
        self.counts["unbound_windows"] += 1


def customer_life(client: httpx.Client) -> str:
    """Create, five status changes, delete; each call after the previous one answered."""
    created = client.post("/customer/data", json={"name": "Ordered"})
    assert created.status_code == 201, created.text
    customer_id: str = created.json()["data"]["customer_id"]
    for status in STATUSES:
        changed = client.patch(f"/customer/data/{customer_id}/status", json={"status": status})
        assert changed.status_code == 200, changed.text
    deleted = client.delete(f"/customer/data/{customer_id}")
    assert deleted.status_code == 200, deleted.text
    return customer_id


def run_customers(api_url: str, api_key: str) -> list[str]:
    def one(_index: int) -> str:
        with httpx.Client(base_url=api_url, headers={"X-API-Key": api_key}, timeout=30) as c:
            return customer_life(c)

    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        return list(pool.map(one, range(CUSTOMERS)))


def first_arrivals(settings: Settings, queue: str) -> list[dict[str, Any]]:
    """The queue's messages in order, each event_id kept at its first arrival only."""
    seen: set[str] = set()
    documents = []
    for _, properties, body in drain_queue(settings.broker.url, queue):
        document = json.loads(body)
        assert properties.headers["x-fintegrate-sequence"] == document["sequence"]
        if document["event_id"] not in seen:
            seen.add(document["event_id"])
            documents.append(document)
    return documents


def commit_order(engine: Engine, consumer_id: str) -> dict[str, list[tuple[int, str, Any]]]:
    """Per customer: (sequence, event_type, new status) in sequence order."""
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT customer_id, sequence, event_type, payload_json->>'new_status' AS status "
                "FROM customer_events WHERE consumer_id = :c AND customer_id IS NOT NULL "
                "ORDER BY customer_id, sequence"
            ),
            {"c": consumer_id},
        ).all()
    history: dict[str, list[tuple[int, str, Any]]] = {}
    for row in rows:
        history.setdefault(str(row.customer_id), []).append(
            (row.sequence, row.event_type, row.status)
        )
    return history


@pytest.mark.parametrize("relay_count", [2, 4])
def test_every_customer_arrives_in_commit_order_through_chaos(
    relay_count: int, stack_settings: Settings, stack_engine: Engine, tmp_path: Path
) -> None:
    api, api_url = serve_api(stack_settings, tmp_path)
    relays = [
        FintegrateProcess(f"relay{n}", RELAY, stack_settings, tmp_path).start()
        for n in range(relay_count)
    ]
    chaos = None
    try:
        tenant = create_tenant_over_http(api_url, stack_settings.auth.admin_api_key, "ordered")
        chaos = Chaos(relays, Broker(stack_settings), tenant["name"])
        chaos.thread.start()
        started = time.monotonic()
        customers = run_customers(api_url, tenant["api_key"])
        load_seconds = time.monotonic() - started
        chaos.stop.set()
        chaos.thread.join(30)
        total = CUSTOMERS * EVENTS_PER_CUSTOMER + 1
        everything = {"published": total}
        assert wait_until(
            lambda: publish_states(stack_engine, tenant["consumer_id"]) == everything, 120
        ), publish_states(stack_engine, tenant["consumer_id"])
        arrivals = first_arrivals(stack_settings, tenant["queue_name"])
    finally:
        if chaos is not None:
            chaos.stop.set()
        for relay in relays:
            relay.terminate()
        api.terminate()

    expected_types = (
        ["customer_creation"] + ["customer_status_change"] * len(STATUSES) + ["customer_deletion"]
    )
    history = commit_order(stack_engine, tenant["consumer_id"])
    assert sorted(history) == sorted(customers)
    for events in history.values():
        assert [sequence for sequence, _, _ in events] == list(range(1, EVENTS_PER_CUSTOMER + 1))
        assert [event_type for _, event_type, _ in events] == expected_types
        assert [status for _, _, status in events][1:-1] == list(STATUSES)

    assert len(arrivals) == total  # nothing missing
    arrived: dict[str, list[int]] = {}
    for document in arrivals:
        if document["customer_id"] is not None:
            arrived.setdefault(document["customer_id"], []).append(document["sequence"])
    out_of_order = [c for c, seqs in arrived.items() if seqs != sorted(seqs)]
    assert out_of_order == []
    assert all(seqs == list(range(1, EVENTS_PER_CUSTOMER + 1)) for seqs in arrived.values())
    assert chaos.counts["kills"] >= 1 and chaos.counts["unbound_windows"] >= 1
    report_figures(
        f"ordering chaos, {relay_count} relays",
        customers=CUSTOMERS,
        events=total,
        load_seconds=round(load_seconds, 1),
        **chaos.counts,
    )
