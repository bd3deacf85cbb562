#!/usr/bin/env python3
"""Event pipeline benchmark: relay drain rate and end-to-end latency.

    .venv/bin/python scripts/bench_relay.py --events 50000 --rate 200 --duration 30

1. Drain: seeds ``--events`` pending events over ``--customers`` customers (interleaved, as
   concurrent customers write them) in a fresh database, then, on the same backlog:
   raw pika (BlockingChannel, one confirm per message, mandatory); the previous unordered
   relay's algorithm (claim FOR UPDATE SKIP LOCKED, one confirmed batch, mark; kept here as
   the baseline); ``OutboxRelay`` (ordered, leased) in this process, with the previous
   oldest-first selection then with the per-tenant one; and 1 then 2
   ``fintegrate relay`` processes. Prints each rate (events/s) and the ratios.
2. Latency: runs ``fintegrate serve``, ``fintegrate relay`` and ``fintegrate consume`` as
   subprocesses, creates customers at a steady ``--rate`` for ``--duration`` seconds and
   measures API 201 received -> handler called (p50/p99).
3. Fairness (``--fairness``, instead of 1 and 2): a loud tenant's backlog of
   ``--fairness-events`` drains through an in-process relay while a quiet tenant writes
   ``--quiet-rate`` events/s; prints the quiet tenant's latency (commit -> confirmed
   publish recorded, p50/p99) next to the drain rate, once with the relay's per-tenant
   selection and once with the previous oldest-first selection (its index built for that
   run only), on fresh tenants in the same database.
Everything uses its own database and vhost on loopback, dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fintegrate_cli.server import settings_environment  # noqa: E402
from service.config import Settings, load_settings  # noqa: E402
from service.events import outbox  # noqa: E402
from service.kit.db import create_db_engine  # noqa: E402
from service.messaging import topology  # noqa: E402
from service.messaging.connection import open_blocking  # noqa: E402
from service.messaging.messages import event_from_row  # noqa: E402
from service.messaging.operate.provisioning import provision_consumer_queues  # noqa: E402
from service.messaging.publish import relay as relay_module  # noqa: E402
from service.messaging.publish.publisher import ConfirmingPublisher, outgoing_event  # noqa: E402
from service.messaging.publish.relay import OutboxRelay  # noqa: E402
from service.migrations import runner as migrations  # noqa: E402

PG_ADMIN = "postgresql+psycopg2://fintegrate_user:fintegrate_pass@127.0.0.1:5432/postgres"
RABBIT = "fintegrate_user:fintegrate_pass@127.0.0.1"
MANAGEMENT = f"http://{RABBIT}:15672"
HANDLER_LOG_ENV = "FINTEGRATE_BENCH_HANDLER_LOG"
LOAD_CONNECTIONS = 32
SEED = text(
    """
    INSERT INTO customer_events (customer_id, consumer_id, event_type, source_service,
                                 payload_json, metadata_json)
    SELECT md5(:salt || (n % :customers)::text)::uuid, :consumer_id, 'customer_creation',
           'POST /customer/data',
           jsonb_build_object('name', 'Customer ' || n, 'email', 'c' || n || '@example.com',
                              'status', 'active'),
           jsonb_build_object('request_id', md5(n::text))
    FROM generate_series(1, :count) AS n
    """
)
RESET = text(
    """
    UPDATE customer_events SET publish_status = 'pending', published_at = NULL,
        publish_try_count = 0, next_attempt_at = created_at
    """
)
PENDING = text("SELECT count(*) FROM customer_events WHERE publish_status = 'pending'")
# The relay before per-aggregate ordering (kept as the drain baseline): no order at all.
UNORDERED_CLAIM = text(
    """
    SELECT e.event_id, e.customer_id, e.consumer_id, e.event_type, e.payload_json,
           e.metadata_json, e.created_at, e.publish_try_count, e.sequence,
           c.name AS consumer_name
    FROM customer_events e LEFT JOIN consumers c ON c.consumer_id = e.consumer_id
    WHERE e.publish_status = 'pending' AND e.next_attempt_at <= now()
    ORDER BY e.next_attempt_at, e.created_at
    LIMIT :limit
    FOR UPDATE OF e SKIP LOCKED
    """
)
UNORDERED_MARK = text(
    """
    UPDATE customer_events
    SET publish_status = 'published', published_at = now(),
        publish_try_count = publish_try_count + 1
    WHERE event_id = ANY(CAST(:event_ids AS uuid[]))
    """
)
ROWS = text(
    """
    SELECT e.*, c.name AS consumer_name FROM customer_events e
    JOIN consumers c ON c.consumer_id = e.consumer_id WHERE e.publish_status = 'pending'
    """
)

LAG = text(
    """
    SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lag) AS p50,
           percentile_cont(0.99) WITHIN GROUP (ORDER BY lag) AS p99
    FROM (SELECT extract(epoch FROM published_at - created_at) * 1000 AS lag
          FROM customer_events
          WHERE customer_id = ANY(CAST(:customer_ids AS uuid[])) AND published_at IS NOT NULL
          ) AS t
    """
)

# The selection before per-tenant fairness (oldest due head first across all tenants) and
# the index it walked; the fairness run compares against it.
PREVIOUS_WALK_INDEX = text(
    """
    CREATE INDEX IF NOT EXISTS ix_bench_previous_walk
        ON customer_events (next_attempt_at, created_at, sequence)
        WHERE publish_status = 'pending' AND next_attempt_at IS NOT NULL
    """
)
DROP_PREVIOUS_WALK_INDEX = text("DROP INDEX IF EXISTS ix_bench_previous_walk")
PREVIOUS_DUE_HEADS = text(
    f"SELECT {outbox.EVENT_COLUMNS}"  # noqa: S608 - constant column list
    # what the relay reads off the per-tenant selection's rows: runs are always read (as
    # before) and one share is the whole batch
    """, true AS has_more, CAST(:limit AS integer) AS tenant_share
    FROM customer_events e
    LEFT JOIN consumers c ON c.consumer_id = e.consumer_id
    WHERE e.publish_status = 'pending' AND e.next_attempt_at <= now()
      AND fintegrate_aggregate_partition(e.consumer_id, e.customer_id, :partition_count)
          = ANY(CAST(:partitions AS integer[]))
      AND NOT EXISTS (
          SELECT 1 FROM customer_events b
          WHERE b.publish_status = 'pending'
            AND coalesce(b.customer_id, b.consumer_id) = coalesce(e.customer_id, e.consumer_id)
            AND b.sequence < e.sequence)
    ORDER BY e.next_attempt_at, e.created_at, e.sequence
    LIMIT :limit
    """
)
QUIET_EVENT = text(
    """
    INSERT INTO customer_events (customer_id, consumer_id, event_type, source_service,
                                 payload_json, metadata_json)
    VALUES (gen_random_uuid(), :consumer_id, 'customer_creation', 'bench', '{}', '{}')
    RETURNING event_id
    """
)
PENDING_OF = text(
    "SELECT count(*) FROM customer_events WHERE consumer_id = :c AND publish_status = 'pending'"
)
QUIET_LAG = text(
    """
    SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lag) AS p50,
           percentile_cont(0.99) WITHIN GROUP (ORDER BY lag) AS p99, count(*) AS n
    FROM (SELECT extract(epoch FROM published_at - created_at) * 1000 AS lag
          FROM customer_events
          WHERE event_id = ANY(CAST(:event_ids AS uuid[])) AND published_at IS NOT NULL) AS t
    """
)

# -- handler used by the consume subprocess (``--handler bench_relay:record_handler``) -------
_handler_log: Any = None


def record_handler(message: Any) -> None:
    """Append ``customer_id wall-clock-seconds`` when the handler is called."""
    global _handler_log
    if _handler_log is None:
        _handler_log = open(os.environ[HANDLER_LOG_ENV], "a", buffering=1)  # noqa: SIM115
    _handler_log.write(f"{message.customer_id} {time.time():.6f}\n")


# -- isolated resources ---------------------------------------------------------------------


@contextmanager
def bench_database() -> Any:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)
    try:
        engine = create_engine(url)
        migrations.apply(engine)
        engine.dispose()
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def bench_vhost() -> Any:
    vhost = f"bench_{uuid.uuid4().hex[:10]}"
    httpx.put(f"{MANAGEMENT}/api/vhosts/{vhost}", timeout=10).raise_for_status()
    httpx.put(
        f"{MANAGEMENT}/api/permissions/{vhost}/fintegrate_user",
        json={"configure": ".*", "write": ".*", "read": ".*"},
        timeout=10,
    ).raise_for_status()
    try:
        yield f"amqp://{RABBIT}:5672/{vhost}"
    finally:
        httpx.delete(f"{MANAGEMENT}/api/vhosts/{vhost}", timeout=30)


# -- part 1: drain rate ----------------------------------------------------------------------


def seed_backlog(settings: Settings, count: int, customers: int) -> str:
    """One provisioned consumer with ``count`` pending events of ``customers``; its queue."""
    name = f"bench_{uuid.uuid4().hex[:8]}"
    engine = create_engine(settings.database.url)  # no statement timeout for the bulk seed
    with engine.begin() as connection:
        consumer_id = connection.execute(
            text("INSERT INTO consumers (name) VALUES (:n) RETURNING consumer_id"), {"n": name}
        ).scalar_one()
        params = {"consumer_id": consumer_id, "count": count, "customers": customers}
        connection.execute(SEED, {**params, "salt": name})
    with engine.connect() as connection:
        connection.execute(text("ANALYZE customer_events"))
    engine.dispose()
    return provision_consumer_queues(settings, name).queue


def reset_backlog(settings: Settings, queue: str) -> None:
    """Every event pending again and the queue empty: the next drain starts equal."""
    engine = create_db_engine(settings.database, pool_size=1)
    with engine.begin() as connection:
        connection.execute(RESET)
    with engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT").execute(
            text("VACUUM ANALYZE customer_events")
        )
    engine.dispose()
    connection = open_blocking(settings.broker.url)
    connection.channel().queue_purge(queue)
    connection.close()


def unordered_rate(settings: Settings, queue: str, count: int, batch_size: int) -> float:
    """The previous relay's cycle: claim with row locks, one confirmed batch, mark, commit."""
    engine = create_db_engine(settings.database, pool_size=1)
    published = 0
    started = time.perf_counter()
    with ConfirmingPublisher(settings.broker.url) as publisher:
        while True:
            with engine.begin() as connection:
                connection.execute(text("SET LOCAL enable_sort = off"))
                rows = connection.execute(UNORDERED_CLAIM, {"limit": batch_size}).all()
                if not rows:
                    break
                results = publisher.publish_batch(
                    [outgoing_event(event_from_row(row)) for row in rows]
                )
                done = [str(r.event_id) for r, res in zip(rows, results, strict=True) if res.ok]
                connection.execute(UNORDERED_MARK, {"event_ids": done})
                published += len(done)
    elapsed = time.perf_counter() - started
    engine.dispose()
    assert published == count, published
    reset_backlog(settings, queue)
    return count / elapsed


def print_profile(profiler: cProfile.Profile, elapsed: float) -> None:
    """Where the relay's wall time goes: the biggest cumulative entries, grouped by role."""
    stats = pstats.Stats(profiler)
    roles = {
        "database reads (heads, runs)": ("due_heads", "aggregate_runs"),
        "publishing + waiting for confirms": ("publish_batch",),
        "building messages (JSON, properties)": ("outgoing_event",),
        "recording outcomes (fenced)": ("_record",),
        "lease upkeep (join, rebalance)": ("_hold_partitions",),
    }
    entries = stats.stats  # type: ignore[attr-defined]
    print(f"  profile of the ordered drain ({elapsed:.2f}s wall):")
    for role, names in roles.items():
        seconds = sum(
            cumulative
            for (_, _, function), (_, _, _, cumulative, _) in entries.items()
            if function in names
        )
        print(f"    {role:40s} {seconds:6.2f}s  {100 * seconds / elapsed:5.1f}%")


def process_rate(settings: Settings, queue: str, count: int, relays: int) -> float:
    """``relays`` ``fintegrate relay`` processes from start until nothing is pending."""
    cli = str(Path(sys.executable).parent / "fintegrate")
    engine = create_db_engine(settings.database, pool_size=1)
    with ExitStack() as stack:
        started = time.perf_counter()
        for _ in range(relays):
            start(stack, [cli, "-q", "relay"], environment(settings))
        while True:
            with engine.connect() as connection:
                if connection.execute(PENDING).scalar_one() == 0:
                    break
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
    engine.dispose()
    reset_backlog(settings, queue)
    return count / elapsed


def raw_pika_rate(settings: Settings, queue: str) -> float:
    """The same messages through a BlockingChannel, one confirm per message."""
    engine = create_db_engine(settings.database, pool_size=1)
    with engine.connect() as connection:
        messages = [outgoing_event(event_from_row(row)) for row in connection.execute(ROWS)]
    engine.dispose()
    connection = open_blocking(settings.broker.url)
    channel = connection.channel()
    channel.confirm_delivery()
    started = time.perf_counter()
    for message in messages:
        channel.basic_publish(
            topology.EXCHANGE, message.routing_key, message.body, message.properties, mandatory=True
        )
    elapsed = time.perf_counter() - started
    assert channel.queue_declare(queue, passive=True).method.message_count == len(messages)
    channel.queue_purge(queue)
    connection.close()
    return len(messages) / elapsed


def relay_rate(
    settings: Settings, queue: str, count: int, batch_size: int, profile: bool = False
) -> float:
    engine = create_db_engine(settings.database, pool_size=2)
    relay = OutboxRelay.from_settings(settings, engine, threading.Event(), batch_size=batch_size)
    profiler = cProfile.Profile() if profile else None
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    drained = relay.drain()
    elapsed = time.perf_counter() - started
    if profiler is not None:
        profiler.disable()
        print_profile(profiler, elapsed)
    relay.close()
    engine.dispose()
    assert drained.published == count, drained
    connection = open_blocking(settings.broker.url)
    channel = connection.channel()
    assert channel.queue_declare(queue, passive=True).method.message_count == count
    connection.close()
    reset_backlog(settings, queue)
    return count / elapsed


# -- part 2: end-to-end latency ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def environment(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINTEGRATE_")}
    env.update(settings_environment(settings))
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{ROOT / 'scripts'}"
    return {**env, **extra}


def start(stack: ExitStack, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    def stop() -> None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()

    stack.callback(stop)
    return process


def wait_healthy(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"API at {url} did not become healthy")


def steady_load(
    url: str, api_key: str, rate: float, seconds: float
) -> dict[str, tuple[float, float]]:
    """Open-loop POST /customer/data at ``rate``/s; customer_id -> wall times (sent, 201)."""
    return asyncio.run(_steady_load(url, api_key, rate, seconds))


async def _steady_load(
    url: str, api_key: str, rate: float, seconds: float
) -> dict[str, tuple[float, float]]:
    """Raw HTTP/1.1 over keep-alive connections: cheap enough not to steal the servers' CPU."""
    host, port = url.removeprefix("http://").split(":")
    body = b'{"name": "Bench Customer", "email": "bench@example.com"}'
    request = (
        f"POST /customer/data HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {api_key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(LOAD_CONNECTIONS):
        pool.put_nowait(await asyncio.open_connection(host, int(port)))
    answered: dict[str, tuple[float, float]] = {}

    async def create() -> None:
        sent = time.time()  # the scheduled moment: waiting for a free connection counts
        reader, writer = await pool.get()
        writer.write(request)
        status, payload = await read_response(reader)
        if status == 201:
            answered[json.loads(payload)["data"]["customer_id"]] = (sent, time.time())
        pool.put_nowait((reader, writer))

    started = time.monotonic()
    tasks = []
    for index in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, started + index / rate - time.monotonic()))
        tasks.append(asyncio.create_task(create()))
    await asyncio.gather(*tasks)
    while not pool.empty():
        pool.get_nowait()[1].close()
    return answered


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return status, await reader.readexactly(int(value))
    raise RuntimeError(f"response without Content-Length: {head!r}")


def handler_times(path: Path) -> dict[str, float]:
    if not path.exists():
        return {}
    pairs = (line.split() for line in path.read_text().splitlines() if line.strip())
    return {customer: float(stamp) for customer, stamp in pairs}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def latency_run(
    settings: Settings, rate: float, seconds: float, log: Path, api_workers: int = 2
) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = settings.updated({"api_url": url})
    cli = str(Path(sys.executable).parent / "fintegrate")
    with ExitStack() as stack:
        start(
            stack,
            [
                cli,
                "serve",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--workers",
                str(api_workers),
            ],
            environment(settings),
        )
        wait_healthy(url)
        admin = {"X-Admin-Key": settings.auth.admin_api_key or ""}
        tenant = httpx.post(
            f"{url}/consumer/data",
            json={"name": f"lat_{uuid.uuid4().hex[:8]}"},
            headers=admin,
            timeout=30,
        ).json()["data"]
        start(stack, [cli, "-q", "relay"], environment(settings))
        worker_env = environment(
            settings, FINTEGRATE_API_KEY=tenant["api_key"], **{HANDLER_LOG_ENV: str(log)}
        )
        start(
            stack,
            [
                cli,
                "-q",
                "consume",
                "--consumer",
                tenant["name"],
                "--handler",
                "bench_relay:record_handler",
            ],
            worker_env,
        )
        steady_load(url, tenant["api_key"], rate, 2)  # warm-up, not measured
        time.sleep(2)
        warm = set(handler_times(log))
        answered = steady_load(url, tenant["api_key"], rate, seconds)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not set(answered) <= set(handler_times(log)):
            time.sleep(0.5)
    called = handler_times(log)
    publish_lag = outbox_lag(settings, [c for c in answered if c not in warm])
    measured = {c: times for c, times in answered.items() if c in called and c not in warm}
    latencies = [(called[c] - answered_at) * 1000 for c, (_, answered_at) in measured.items()]
    from_sent = [(called[c] - sent) * 1000 for c, (sent, _) in measured.items()]
    return {
        "requests": int(rate * seconds),
        "answered_201": len(answered),
        "handled": len(latencies),
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": max(latencies),
        "sent_p50_ms": percentile(from_sent, 0.50),
        "sent_p99_ms": percentile(from_sent, 0.99),
        "publish_lag_p50_ms": publish_lag[0],
        "publish_lag_p99_ms": publish_lag[1],
    }


def outbox_lag(settings: Settings, customer_ids: list[str]) -> tuple[float, float]:
    """p50/p99 of published_at - created_at (commit to confirmed publish) of these customers."""
    engine = create_db_engine(settings.database, pool_size=1)
    with engine.connect() as connection:
        row = connection.execute(LAG, {"customer_ids": customer_ids}).one()
    engine.dispose()
    return float(row.p50 or 0), float(row.p99 or 0)


def drain_figures(
    settings: Settings, events: int, customers: int, batch_size: int, profile: bool
) -> None:
    queue = seed_backlog(settings, events, customers)
    print(f"backlog: {events} events over {customers} customers, batch {batch_size}")
    raw = raw_pika_rate(settings, queue)
    print(f"raw pika, confirm per message: {raw:,.0f} events/s")
    with previous_selection(settings):  # the unordered claim walks that index too
        unordered = unordered_rate(settings, queue, events, batch_size)
        print(f"unordered relay (previous algorithm, baseline): {unordered:,.0f} events/s")
        previous = relay_rate(settings, queue, events, batch_size)
        print(f"ordered relay, previous oldest-first selection: {previous:,.0f} events/s")
    relay = relay_rate(settings, queue, events, batch_size)
    print(
        f"ordered relay, in process: {relay:,.0f} events/s "
        f"({relay / previous:.2f}x the previous selection; target >= 0.9x)"
    )
    if profile:
        relay_rate(settings, queue, events, batch_size, profile=True)
    print(
        f"  ratio ordered/unordered: {relay / unordered:.2f}x (target >= 0.9x); "
        f"ordered/raw pika: {relay / raw:.2f}x (target >= 3.5x)"
    )
    one = process_rate(settings, queue, events, 1)
    two = process_rate(settings, queue, events, 2)
    print(
        f"fintegrate relay processes: 1 -> {one:,.0f} events/s, 2 -> {two:,.0f} events/s "
        f"(2/1 = {two / one:.2f}x; start-up included)"
    )


def previous_due_heads(
    connection: Any,
    partitions: Any,
    partition_count: int,
    limit: int,
    held: Any = (),
    after: Any = None,
    known: Any = None,
) -> list[Any]:
    """The selection before fairness: the oldest due heads across all tenants."""
    connection.execute(outbox.PLANNER_HINTS)
    params = {"partitions": list(partitions), "partition_count": partition_count, "limit": limit}
    return list(connection.execute(PREVIOUS_DUE_HEADS, params).all())


@contextmanager
def previous_selection(settings: Settings) -> Any:
    """The relay reads with the previous oldest-first walk (and its index) meanwhile."""
    engine = create_engine(settings.database.url)
    with engine.begin() as connection:
        connection.execute(PREVIOUS_WALK_INDEX)
    fair = relay_module.due_heads
    relay_module.due_heads = previous_due_heads
    try:
        yield
    finally:
        relay_module.due_heads = fair
        with engine.begin() as connection:
            connection.execute(DROP_PREVIOUS_WALK_INDEX)
        engine.dispose()


class QuietWriter:
    """A quiet tenant: one event per commit at ``rate``/s on its own thread until stopped."""

    def __init__(self, settings: Settings, consumer_id: str, rate: float) -> None:
        self.ids: list[str] = []
        self._settings, self._consumer_id, self._rate = settings, consumer_id, rate
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._write, name="quiet-writer")

    def __enter__(self) -> QuietWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _write(self) -> None:
        engine = create_db_engine(self._settings.database, pool_size=1)
        started = time.monotonic()
        params = {"consumer_id": self._consumer_id}
        while not self._stop.wait(
            max(0.0, started + len(self.ids) / self._rate - time.monotonic())
        ):
            with engine.begin() as connection:
                self.ids.append(str(connection.execute(QUIET_EVENT, params).scalar_one()))
        engine.dispose()


def new_tenant(settings: Settings, engine: Any, prefix: str) -> str:
    """A provisioned consumer; its id."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with engine.begin() as connection:
        consumer_id = connection.execute(
            text("INSERT INTO consumers (name) VALUES (:n) RETURNING consumer_id"), {"n": name}
        ).scalar_one()
    provision_consumer_queues(settings, name)
    return str(consumer_id)


def fairness_run(
    settings: Settings, events: int, customers: int, batch_size: int, quiet_rate: float
) -> dict[str, float]:
    """Drain a loud tenant's backlog beside a quiet writer; drain rate and quiet latency."""
    engine = create_engine(settings.database.url)  # no statement timeout for the bulk seed
    loud = new_tenant(settings, engine, "loud")
    quiet = new_tenant(settings, engine, "quiet")
    with engine.begin() as connection:
        params = {"consumer_id": loud, "count": events, "customers": customers}
        connection.execute(SEED, {**params, "salt": loud})
    with engine.connect() as connection:
        connection.execute(text("ANALYZE customer_events"))
    stop = threading.Event()
    relay_engine = create_db_engine(settings.database, pool_size=2)
    relay = OutboxRelay.from_settings(settings, relay_engine, stop, batch_size=batch_size)
    relay_thread = threading.Thread(target=relay.run, name="relay")
    with QuietWriter(settings, quiet, quiet_rate) as writer:
        started = time.perf_counter()
        relay_thread.start()
        while _pending(engine, loud):
            time.sleep(0.05)
        drain_seconds = time.perf_counter() - started
    deadline = time.monotonic() + 60
    while _pending(engine, quiet) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    relay_thread.join(60)
    relay_engine.dispose()
    with engine.connect() as connection:
        lag = connection.execute(QUIET_LAG, {"event_ids": writer.ids}).one()
    engine.dispose()
    return {
        "drain": events / drain_seconds,
        "quiet_p50_ms": float(lag.p50 or 0),
        "quiet_p99_ms": float(lag.p99 or 0),
        "quiet_events": int(lag.n),
    }


def _pending(engine: Any, consumer_id: str) -> int:
    with engine.connect() as connection:
        return int(connection.execute(PENDING_OF, {"c": consumer_id}).scalar_one())


def fairness_figures(
    settings: Settings, events: int, customers: int, batch_size: int, quiet_rate: float
) -> None:
    print(
        f"fairness: loud tenant {events:,} events over {customers:,} customers, quiet tenant "
        f"{quiet_rate:.0f} events/s, batch {batch_size}, in-process relay"
    )
    fair = fairness_run(settings, events, customers, batch_size, quiet_rate)
    with previous_selection(settings):
        previous = fairness_run(settings, events, customers, batch_size, quiet_rate)
    for label, figures in (("per-tenant selection", fair), ("previous, oldest first", previous)):
        print(
            f"  {label:24s} drain {figures['drain']:,.0f} events/s; quiet commit -> published "
            f"p50 {figures['quiet_p50_ms']:,.1f} ms, p99 {figures['quiet_p99_ms']:,.1f} ms "
            f"({figures['quiet_events']} events)"
        )
    print(f"  drain per-tenant/previous: {fair['drain'] / previous['drain']:.2f}x (target >= 0.9x)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--customers", type=int, default=1_000)
    parser.add_argument("--batch-size", type=int, default=load_settings().relay.batch_size)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--api-workers", type=int, default=2)
    parser.add_argument("--prefetch", type=int, default=load_settings().worker.prefetch)
    parser.add_argument("--skip-drain", action="store_true")
    parser.add_argument(
        "--profile", action="store_true", help="also profile one ordered drain (cProfile)"
    )
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument(
        "--fairness", action="store_true", help="only the fairness run (loud and quiet tenant)"
    )
    parser.add_argument("--fairness-events", type=int, default=15_000)
    parser.add_argument("--quiet-rate", type=float, default=20.0)
    args = parser.parse_args()
    with bench_database() as database_url, bench_vhost() as amqp_url:
        settings = load_settings(
            environment="test",
            database_url=database_url,
            rabbitmq_url=amqp_url,
            redis_url="redis://127.0.0.1:6379/15",
            admin_api_key=f"bench-{uuid.uuid4().hex}",
            rate_limit_api_key_per_minute=1_000_000,
            rate_limit_api_key_burst=1_000_000,
            relay_batch_size=args.batch_size,
            consumer_prefetch=args.prefetch,
        )
        if args.fairness:
            fairness_figures(
                settings, args.fairness_events, args.customers, args.batch_size, args.quiet_rate
            )
            return
        if not args.skip_drain:
            drain_figures(settings, args.events, args.customers, args.batch_size, args.profile)
        if args.skip_latency:
            return
        with tempfile.TemporaryDirectory(prefix="bench_relay_") as directory:
            figures = latency_run(
                settings, args.rate, args.duration, Path(directory) / "h.log", args.api_workers
            )
        print(
            f"end to end at {args.rate:.0f} req/s for {args.duration:.0f}s: "
            f"{figures['answered_201']}/{figures['requests']} answered 201, "
            f"{figures['handled']} handled; p50 {figures['p50_ms']:.1f} ms, "
            f"p99 {figures['p99_ms']:.1f} ms, max {figures['max_ms']:.1f} ms "
            "(targets p50 <= 20 ms, p99 <= 100 ms)"
        )
        print(
            f"  request sent -> handler called (includes the API's own time): p50 "
            f"{figures['sent_p50_ms']:.1f} ms, p99 {figures['sent_p99_ms']:.1f} ms"
        )
        print(
            f"  outbox lag (commit -> confirmed publish): p50 "
            f"{figures['publish_lag_p50_ms']:.1f} ms, p99 {figures['publish_lag_p99_ms']:.1f} ms"
        )


if __name__ == "__main__":
    main()
