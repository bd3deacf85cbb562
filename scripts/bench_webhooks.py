#!/usr/bin/env python3
"""Webhook delivery benchmark: POSTs/s to 1 and to 20 endpoints, and 201 -> receiver latency.

    .venv/bin/python scripts/bench_webhooks.py --events 2000 --rate 50 --duration 5

1. Throughput: for 1 and for ``--endpoints`` (20) loopback receivers, seeds ``--events``
   events of one tenant over ``--customers`` customers in a fresh database (the fan-out
   trigger queues one delivery per endpoint), then times ``WebhookDeliverer`` delivering all
   of them; the baseline is a plain httpx loop POSTing the same bodies to the same receivers
   with as many threads. Prints deliveries/s of both and their ratio.
2. Latency: runs ``fintegrate serve`` (own database and vhost), registers one endpoint,
   creates customers at ``--rate`` for ``--duration`` seconds with ``webhooks deliver``
   running in this process, and reports p50/p99 from the API's 201 to the receiver; the
   baseline is the same bodies POSTed by plain httpx (send -> receiver).
Everything stays on loopback and is dropped at the end. No figure of it is in the docs.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_relay import (  # noqa: E402 - the scripts' shared helpers
    bench_database,
    bench_vhost,
    environment,
    free_port,
    percentile,
    start,
    wait_healthy,
)

from service.config import Settings, load_settings  # noqa: E402
from service.kit.db import create_db_engine  # noqa: E402
from service.webhooks import service as webhooks  # noqa: E402
from service.webhooks.delivery.process import WebhookDeliverer  # noqa: E402
from service.webhooks.schemas import EndpointCreate  # noqa: E402

BENCH_SETTINGS = {
    "environment": "development",
    "webhook_allowed_cidrs": "127.0.0.0/8",
    "webhook_encryption_key": "bench-webhooks-key-0123456789abcdef",
}
SEED = text(
    """
    INSERT INTO customer_events (customer_id, consumer_id, event_type, source_service,
                                 payload_json, metadata_json)
    SELECT md5(:salt || (n % :customers)::text)::uuid, :consumer_id, 'customer_creation',
           'bench', jsonb_build_object('name', 'Customer ' || n), '{}'::jsonb
    FROM generate_series(1, :count) AS n
    """
)
NEW_CONSUMER = text("INSERT INTO consumers (name) VALUES (:name) RETURNING consumer_id")
BODIES = text(
    """
    SELECT e.event_id::text AS event_id, e.sequence, e.payload_json::text AS payload
    FROM customer_events e WHERE e.consumer_id = :consumer_id ORDER BY e.created_at, e.sequence
    """
)


class Receiver:
    """A loopback receiver answering 204; arrival time per ``key_of(body)``."""

    def __init__(self, key_of: Callable[[bytes], str] = lambda body: "") -> None:
        self.count = 0
        self.arrivals: dict[str, float] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                now = time.monotonic()
                with receiver.lock:
                    receiver.count += 1
                    receiver.arrivals.setdefault(key_of(body), now)
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_until(done: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise SystemExit("deliveries did not finish in time")
        time.sleep(0.01)


# -- part 1: throughput ----------------------------------------------------------------------


def seeded_tenant(
    settings: Settings, endpoints: list[Receiver], events: int, customers: int
) -> Any:
    """A consumer with one endpoint per receiver and ``events`` events; its bodies."""
    engine = create_db_engine(settings.database, pool_size=2)
    with engine.begin() as connection:
        consumer_id = connection.execute(
            NEW_CONSUMER, {"name": f"bench_{uuid.uuid4().hex[:8]}"}
        ).scalar_one()
        for receiver in endpoints:
            body = EndpointCreate(url=receiver.url)
            webhooks.create_endpoint(connection, consumer_id, body, settings)
        connection.execute(
            SEED,
            {
                "salt": uuid.uuid4().hex,
                "customers": customers,
                "consumer_id": consumer_id,
                "count": events,
            },
        )
        bodies = [
            row.payload.encode() for row in connection.execute(BODIES, {"consumer_id": consumer_id})
        ]
    engine.dispose()
    return bodies


def deliverer_rate(settings: Settings, receivers: list[Receiver], total: int) -> float:
    engine = create_db_engine(
        settings.database, pool_size=settings.webhooks.delivery_concurrency + 2
    )
    stop = threading.Event()
    deliverer = WebhookDeliverer.from_settings(settings, engine, stop)
    started = time.monotonic()
    thread = threading.Thread(target=deliverer.run, daemon=True)
    thread.start()
    wait_until(lambda: sum(r.count for r in receivers) >= total, timeout=600)
    elapsed = time.monotonic() - started
    stop.set()
    thread.join(30)
    deliverer.close()
    engine.dispose()
    return total / elapsed


def baseline_rate(receivers: list[Receiver], bodies: list[bytes], threads: int) -> float:
    """Plain httpx: every body to every receiver, ``threads`` at once, a client per receiver."""
    clients = [httpx.Client() for _ in receivers]
    jobs = [
        (client, receiver.url, body)
        for body in bodies
        for client, receiver in zip(clients, receivers, strict=True)
    ]
    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(
            pool.map(
                lambda job: job[0].post(
                    job[1], content=job[2], headers={"content-type": "application/json"}
                ),
                jobs,
            )
        )
    elapsed = time.monotonic() - started
    for client in clients:
        client.close()
    return len(jobs) / elapsed


def throughput(settings: Settings, endpoints: int, events: int, customers: int) -> dict[str, float]:
    receivers = [Receiver() for _ in range(endpoints)]
    try:
        bodies = seeded_tenant(settings, receivers, events, customers)
        delivered = deliverer_rate(settings, receivers, events * endpoints)
        plain = baseline_rate(receivers, bodies, settings.webhooks.delivery_concurrency)
    finally:
        for receiver in receivers:
            receiver.stop()
    return {
        "endpoints": endpoints,
        "deliveries_per_s": round(delivered, 1),
        "baseline_per_s": round(plain, 1),
        "ratio": round(delivered / plain, 3),
    }


# -- part 2: latency -------------------------------------------------------------------------


def customer_of(body: bytes) -> str:
    return str(json.loads(body).get("customer_id"))


def latency(settings: Settings, rate: float, duration: float) -> dict[str, float]:
    receiver = Receiver(customer_of)
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    with ExitStack() as stack:
        stack.callback(receiver.stop)
        start(
            stack,
            [str(Path(sys.executable).with_name("fintegrate")), "serve", "--port", str(port)],
            environment(settings),
        )
        wait_healthy(api)
        assert settings.auth.admin_api_key
        made = httpx.post(
            f"{api}/consumer/data",
            json={"name": f"bench_{uuid.uuid4().hex[:8]}"},
            headers={"X-Admin-Key": settings.auth.admin_api_key},
            timeout=30,
        ).json()["data"]
        key = {"X-API-Key": made["api_key"]}
        httpx.post(
            f"{api}/webhooks/endpoints",
            json={"url": receiver.url, "event_types": ["customer_creation"]},
            headers=key,
            timeout=30,
        ).raise_for_status()
        engine = create_db_engine(
            settings.database, pool_size=settings.webhooks.delivery_concurrency + 2
        )
        stop = threading.Event()
        deliverer = WebhookDeliverer.from_settings(settings, engine, stop)
        thread = threading.Thread(target=deliverer.run, daemon=True)
        thread.start()
        answered = post_customers(api, key, rate, duration)
        wait_until(lambda: len(receiver.arrivals) >= len(answered), timeout=120)
        stop.set()
        thread.join(30)
        deliverer.close()
        engine.dispose()
    waits = [receiver.arrivals[c] - at for c, at in answered.items()]
    plain = plain_latency(len(answered))
    return {
        "customers": len(answered),
        "p50_ms": round(percentile(waits, 0.5) * 1000, 1),
        "p99_ms": round(percentile(waits, 0.99) * 1000, 1),
        "baseline_p50_ms": round(percentile(plain, 0.5) * 1000, 1),
        "baseline_p99_ms": round(percentile(plain, 0.99) * 1000, 1),
    }


def post_customers(api: str, key: dict[str, str], rate: float, duration: float) -> dict[str, float]:
    """Create customers at ``rate``/s for ``duration`` s; customer_id -> when the 201 came."""
    answered: dict[str, float] = {}
    with httpx.Client(base_url=api, headers=key, timeout=30) as client:
        started = time.monotonic()
        index = 0
        while time.monotonic() - started < duration:
            due = started + index / rate
            time.sleep(max(0.0, due - time.monotonic()))
            response = client.post("/customer/data", json={"name": f"c{index}"})
            answered[response.json()["data"]["customer_id"]] = time.monotonic()
            index += 1
    return answered


def plain_latency(count: int) -> list[float]:
    """Send -> receiver of ``count`` plain httpx POSTs, one at a time, on one client."""
    receiver = Receiver(customer_of)
    waits = []
    with httpx.Client() as client:
        for index in range(count):
            body = json.dumps({"customer_id": f"plain-{index}"}).encode()
            sent = time.monotonic()
            client.post(receiver.url, content=body, headers={"content-type": "application/json"})
            waits.append(receiver.arrivals[f"plain-{index}"] - sent)
    receiver.stop()
    return waits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--endpoints", type=int, default=20)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--skip-latency", action="store_true")
    options = parser.parse_args()
    with bench_database() as database_url, bench_vhost() as amqp_url:
        settings = load_settings(
            database_url=database_url,
            rabbitmq_url=amqp_url,
            redis_url=None,
            admin_api_key=f"adm-{uuid.uuid4().hex}",
            **BENCH_SETTINGS,  # type: ignore[arg-type]
        )
        per_endpoint = max(1, options.events // options.endpoints)
        figures = {
            "one_endpoint": throughput(settings, 1, options.events, options.customers),
            "many_endpoints": throughput(
                settings, options.endpoints, per_endpoint, options.customers
            ),
        }
        if not options.skip_latency:
            figures["latency"] = latency(settings, options.rate, options.duration)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
