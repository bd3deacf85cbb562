#!/usr/bin/env python3
"""History benchmark: the API, relay and operator reads on an empty outbox and on a big one.

    .venv/bin/python scripts/bench_history.py --events 10000000 --days 30

In one run, two setups side by side, each in its own database with its own tenant and API
server (one vhost; all dropped at the end):
1. both get the same partitions and 2,000 failed deliveries of the last 6 days (which the
   redeliver dry-run selects in both); the ``loaded`` one also gets ``--events`` events
   over ``--days`` days for its tenant (INSERT ... SELECT generate_series straight into
   PostgreSQL, chunk by chunk, every trigger on), VACUUM ANALYZE, then the write-back;
2. ``--rounds`` rounds, the order alternating (empty first, then loaded first, ...): each
   round measures on each setup POST /customer/data p99, relay drain of a fresh backlog,
   GET /events first page, tenant redeliver dry-run, `events stats`; a figure is the
   median of its rounds, and its ratio loaded/empty has the target 1.2x. Alternating
   rounds put both setups under the same machine: this VM's speed moves by 20-30 %
   between minutes, which a before/after pair minutes apart measured as a ratio;
3. `fintegrate events archive --older-than DAYS/2` on the loaded setup as a subprocess:
   events/s (target: >= 50,000) and its peak RSS (target: <= 200 MB), plus table size
   before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, create_engine, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_relay import bench_vhost  # noqa: E402

from fintegrate_cli.events import event_stats  # noqa: E402
from service.bench.servers import (  # noqa: E402
    api_command,
    free_port,
    fresh_database,
    running_server,
    seed_tenant,
)
from service.config import Settings, load_settings  # noqa: E402
from service.kit.db import create_db_engine  # noqa: E402
from service.messaging.operate.provisioning import provision_consumer_queues  # noqa: E402
from service.messaging.publish.relay import OutboxRelay  # noqa: E402

CHUNK = 500_000
CUSTOMERS = 100_000
RATIO_TARGET = 1.2
ARCHIVE_TARGET = 50_000
RSS_TARGET_MB = 200
PAST_PARTITIONS = text(
    """
    SELECT fintegrate_create_event_partition(
        date_bin('7 days', now(), '2000-01-03'::timestamptz) - interval '7 days' * (g + 1),
        date_bin('7 days', now(), '2000-01-03'::timestamptz) - interval '7 days' * g)
    FROM generate_series(0, :weeks - 1) g
    """
)
# History as production leaves it: 99.9% delivered, 0.1% delivery failed (older than the
# redeliver window: the recent failures are RECENT_FAILURES, the same in both phases); a
# stable pool of customers (one sequence counter each); payloads the size of a
# customer_creation event.
LOAD = text(
    """
    INSERT INTO customer_events
        (consumer_id, customer_id, event_type, source_service, payload_json, metadata_json,
         created_at, publish_status, published_at, publish_try_count, deliver_status,
         delivered_at, deliver_try_count, sequence)
    SELECT CAST(:consumer AS uuid), c.customer_id, 'customer_creation', 'POST /customer/data',
           jsonb_build_object('customer_id', c.customer_id, 'name', 'Customer ' || g,
                              'email', 'c' || g || '@example.com', 'status', 'active'),
           jsonb_build_object('request_id', md5(g::text)),
           t.at, 'published', t.at, 1,
           CASE WHEN g % 1000 = 0 AND t.at < now() - interval '8 days' THEN 'failed'
                ELSE 'delivered' END, t.at, 1,
           g / :customers + 1
    FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) g
    CROSS JOIN LATERAL (SELECT now() - make_interval(days => :days)
                               + make_interval(secs => :seconds * g / :total) AS at) t
    CROSS JOIN LATERAL (SELECT md5(:consumer || (g % :customers))::uuid AS customer_id) c
    """
)
# The bulk load numbers events itself (customer g % CUSTOMERS gets 1, 2, 3 ... in time
# order), so the per-row sequence trigger is off while it runs; the counters are set after.
SEQUENCE_TRIGGER_OFF = text(
    "ALTER TABLE customer_events DISABLE TRIGGER trg_customer_events_sequence"
)
SEQUENCE_TRIGGER_ON = text(
    "ALTER TABLE customer_events ENABLE TRIGGER trg_customer_events_sequence"
)
SEQUENCE_COUNTERS = text(
    """
    INSERT INTO event_sequences (consumer_id, aggregate_id, last_sequence)
    SELECT consumer_id, coalesce(customer_id, consumer_id), max(sequence)
    FROM customer_events GROUP BY 1, 2
    ON CONFLICT (aggregate_id, consumer_id) DO UPDATE
        SET last_sequence = GREATEST(event_sequences.last_sequence, EXCLUDED.last_sequence)
    """
)
# What the tenant's redeliver dry-run (7 days) selects, in both phases alike: 2,000 failed
# deliveries of the last 6 days. Its cost follows its selection; with the history's own
# failures in the window the two phases would compare different selections (0 vs ~2,300).
RECENT_FAILURES = text(
    """
    INSERT INTO customer_events (customer_id, consumer_id, event_type, source_service,
                                 payload_json, metadata_json, created_at, publish_status,
                                 published_at, publish_try_count, deliver_status,
                                 deliver_try_count)
    SELECT gen_random_uuid(), CAST(:consumer AS uuid), 'customer_creation', 'bench',
           jsonb_build_object('name', 'Failed ' || n), '{}'::jsonb,
           now() - make_interval(secs => n * 250), 'published',
           now() - make_interval(secs => n * 250), 1, 'failed', 1
    FROM generate_series(1, 2000) n
    """
)
BACKLOG = text(
    """
    INSERT INTO customer_events (customer_id, consumer_id, event_type, source_service,
                                 payload_json, metadata_json)
    SELECT gen_random_uuid(), CAST(:consumer AS uuid), 'customer_creation', 'bench',
           jsonb_build_object('name', 'Backlog ' || n), '{}'::jsonb
    FROM generate_series(1, :count) n
    """
)
DELIVERED = text(
    "UPDATE customer_events SET deliver_status = 'delivered', delivered_at = now() "
    "WHERE publish_status = 'published' AND deliver_status = 'pending'"
)
TABLE_BYTES = text(
    "SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0) FROM pg_inherits "
    "WHERE inhparent = 'customer_events'::regclass"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000, help="history to load")
    parser.add_argument("--days", type=int, default=30, help="days the history spans")
    parser.add_argument("--requests", type=int, default=1500, help="POSTs per p99 round")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds (median)")
    parser.add_argument("--backlog", type=int, default=20_000, help="relay drain backlog")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    parser.add_argument("--keep-database", action="store_true", help="to inspect it after")
    parser.add_argument("--json", action="store_true", help="figures as JSON on stdout")
    return parser.parse_args(argv)


def timed(action: Callable[[], Any], repeat: int) -> float:
    """Median milliseconds of ``repeat`` calls."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def post_p99(base: str, api_key: str, requests: int) -> float:
    """p99 milliseconds of ``requests`` customer creations from 8 concurrent clients."""
    headers = {"X-API-Key": api_key}
    latencies: list[float] = []
    lock = threading.Lock()

    def worker(count: int) -> None:
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            for n in range(count):
                started = time.perf_counter()
                response = client.post("/customer/data", json={"name": f"p99 {n}"})
                elapsed = (time.perf_counter() - started) * 1000
                assert response.status_code == 201, response.text
                with lock:
                    latencies.append(elapsed)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(worker, [requests // 8] * 8))
    return statistics.quantiles(latencies, n=100)[98]


def drain_rate(settings: Settings, consumer_id: str, count: int) -> float:
    """Events/s of one relay draining a fresh backlog of ``count`` events."""
    engine = create_db_engine(settings.database, pool_size=2)
    with engine.begin() as connection:
        connection.execute(text("SET LOCAL statement_timeout = 0"))
        connection.execute(BACKLOG, {"consumer": consumer_id, "count": count})
    relay = OutboxRelay.from_settings(settings, engine, threading.Event())
    started = time.perf_counter()
    drained = relay.drain()
    elapsed = time.perf_counter() - started
    relay.close()
    with engine.begin() as connection:  # the tenant's worker confirms them
        connection.execute(text("SET LOCAL statement_timeout = 0"))
        connection.execute(DELIVERED)
    engine.dispose()
    assert drained.published >= count, drained
    return count / elapsed


@dataclass(frozen=True)
class Setup:
    """One database with one tenant and an API server in front of it."""

    name: str
    settings: Settings
    base: str
    consumer_id: str
    api_key: str
    engine: Engine


def measure(setup: Setup, args: argparse.Namespace) -> dict[str, float]:
    """Every figure once, from the same starting point: statistics fresh, no dead rows."""
    settings, base = setup.settings, setup.base
    vacuum_analyze(settings.database.url)
    with httpx.Client(base_url=base, headers={"X-API-Key": setup.api_key}, timeout=60) as client:
        first_page = timed(lambda: client.get("/events", params={"limit": 50}), 30)
        body = {"period_in_days": 7, "max_try_count": 5, "dry_run": True}  # the CLI default
        redeliver = timed(lambda: client.post("/events/redeliver", json=body), 5)
    return {
        "post_customer_p99_ms": post_p99(base, setup.api_key, args.requests),
        "relay_drain_events_per_s": drain_rate(settings, setup.consumer_id, args.backlog),
        "get_events_first_page_ms": first_page,
        "redeliver_dry_run_ms": redeliver,
        "events_stats_ms": timed(lambda: event_stats(settings, None), 3),
    }


def medians(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


def bulk_load(engine: Engine, consumer_id: str, events: int, days: int) -> float:
    """Loads the history chunk by chunk; returns events/s."""
    started = time.perf_counter()
    with engine.begin() as connection:
        connection.execute(SEQUENCE_TRIGGER_OFF)
    for first in range(0, events, CHUNK):
        last = min(first + CHUNK, events) - 1
        with engine.begin() as connection:
            connection.execute(text("SET LOCAL statement_timeout = 0"))
            connection.execute(
                LOAD,
                {
                    "consumer": consumer_id,
                    "first": first,
                    "last": last,
                    "total": events,
                    "days": days,
                    "seconds": days * 86_400 - 3_600,
                    "customers": CUSTOMERS,
                },
            )
        print(f"  loaded {last + 1:,} / {events:,}", file=sys.stderr, flush=True)
    with engine.begin() as connection:
        connection.execute(text("SET LOCAL statement_timeout = 0"))
        connection.execute(SEQUENCE_TRIGGER_ON)
        connection.execute(SEQUENCE_COUNTERS)
    vacuum_analyze(str(engine.url.render_as_string(hide_password=False)))
    return events / (time.perf_counter() - started)


def dirty_mb() -> float:
    """The kernel's dirty page cache (``Dirty`` in /proc/meminfo), in MB; 0 where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("Dirty:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def settle_write_back() -> None:
    """Wait until the bulk load's gigabytes have reached the disk.

    Loading and vacuuming 10M events leaves GBs of dirty pages that the kernel writes back
    over the next minutes; every commit's WAL fsync queues behind them meanwhile (the relay
    drain measured 15x slower, the API's Redis calls timed out). A table that grew over 30
    days has no such write-back pending, so the loaded phase starts once it is done.
    """
    before = dirty_mb()
    started = time.perf_counter()
    os.sync()
    print(
        f"write-back: {before:,.0f} MB dirty, synced in {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
        flush=True,
    )


def vacuum_analyze(database_url: str) -> None:
    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text("SET statement_timeout = 0"))
        connection.execute(text("VACUUM ANALYZE customer_events"))
    engine.dispose()


def run_archive(settings: Settings, older_than: int) -> dict[str, Any]:
    """The CLI archive as a child process: events/s and the child's peak RSS."""
    directory = tempfile.mkdtemp(prefix="bench_history_")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINTEGRATE_")}
    env.update(FINTEGRATE_DATABASE_URL=settings.database.url, FINTEGRATE_ENVIRONMENT="test")
    command = [
        str(ROOT / ".venv/bin/fintegrate"),
        "events",
        "archive",
        "--older-than",
        str(older_than),
        "--to",
        directory,
        "--yes",
        "--json",
    ]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - started
    result = json.loads(done.stdout)
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    archive_bytes = sum(f["bytes"] for f in result["files"])
    for path in Path(directory).iterdir():
        path.unlink()
    os.rmdir(directory)
    return {
        "archived_events": result["archived_events"],
        "archive_seconds": elapsed,
        "archive_events_per_s": result["archived_events"] / elapsed,
        "archive_events_per_s_in_process": result["archived_events"] / result["elapsed_seconds"],
        "archive_peak_rss_mb": peak_kb / 1024,
        "archive_bytes": archive_bytes,
        "kept_not_final": result["events_kept_not_final"],
    }


def table_bytes(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(TABLE_BYTES).scalar_one())


def report(empty: dict[str, float], full: dict[str, float], extra: dict[str, Any]) -> str:
    lines = [f"{'figure':28} {'empty':>12} {'loaded':>12} {'ratio':>7}  target"]
    for key, before in empty.items():
        after = full[key]
        # a rate is better when higher: its ratio is before/after
        ratio = before / after if key.endswith("_per_s") else after / before
        verdict = "ok" if ratio <= RATIO_TARGET else "MISSED"
        lines.append(f"{key:28} {before:12.1f} {after:12.1f} {ratio:7.2f}  <= 1.2 {verdict}")
    rate = extra["archive_events_per_s"]
    rss = extra["archive_peak_rss_mb"]
    lines.append(
        f"{'archive_events_per_s':28} {rate:12.0f}  target >= {ARCHIVE_TARGET:,} "
        f"{'ok' if rate >= ARCHIVE_TARGET else 'MISSED'}"
    )
    in_process = extra["archive_events_per_s_in_process"]
    lines.append(f"{'  without CLI start-up':28} {in_process:12.0f}")
    lines.append(
        f"{'archive_peak_rss_mb':28} {rss:12.1f}  target <= {RSS_TARGET_MB} "
        f"{'ok' if rss <= RSS_TARGET_MB else 'MISSED'}"
    )
    for key in (
        "events_loaded",
        "load_events_per_s",
        "table_bytes_loaded",
        "bytes_per_event",
        "archived_events",
        "archive_bytes",
        "archive_bytes_per_event",
        "table_bytes_after_archive",
    ):
        lines.append(f"{key:28} {extra[key]:12,.0f}")
    return "\n".join(lines)


def prepare(stack: ExitStack, args: argparse.Namespace, amqp_url: str, name: str) -> Setup:
    """A fresh database with one provisioned tenant, its partitions, recent failures and an
    API server."""
    database_url = stack.enter_context(fresh_database(keep=args.keep_database))
    consumer_id, api_key = seed_tenant(database_url, 4)
    settings = load_settings(
        environment="test",
        database_url=database_url,
        rabbitmq_url=amqp_url,
        redis_url=args.redis_url,
        bcrypt_rounds=4,
    )
    engine = create_engine(database_url)
    stack.callback(engine.dispose)
    with engine.connect() as connection:
        tenant = connection.execute(
            text("SELECT name FROM consumers WHERE consumer_id = :c"), {"c": consumer_id}
        ).scalar_one()
    provision_consumer_queues(settings, tenant)
    with engine.begin() as connection:  # the same partitions, empty or loaded
        connection.execute(PAST_PARTITIONS, {"weeks": args.days // 7 + 2})
        connection.execute(RECENT_FAILURES, {"consumer": consumer_id})
    port = free_port()
    env = {
        "FINTEGRATE_DATABASE_URL": database_url,
        "FINTEGRATE_RABBITMQ_URL": amqp_url,
        "FINTEGRATE_REDIS_URL": args.redis_url,
        "FINTEGRATE_ENVIRONMENT": "test",
    }
    stack.enter_context(running_server(api_command(port, 1), port, env))
    return Setup(name, settings, f"http://127.0.0.1:{port}", consumer_id, api_key, engine)


def alternating_rounds(setups: list[Setup], args: argparse.Namespace) -> list[dict[str, float]]:
    """The median figures of each setup over ``--rounds`` rounds, the order alternating."""
    figures: dict[str, list[dict[str, float]]] = {setup.name: [] for setup in setups}
    for number in range(args.rounds):
        for setup in setups if number % 2 == 0 else setups[::-1]:
            figures[setup.name].append(measure(setup, args))
            print(
                f"round {number + 1} {setup.name}: {json.dumps(figures[setup.name][-1])}",
                file=sys.stderr,
                flush=True,
            )
    return [medians(figures[setup.name]) for setup in setups]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with ExitStack() as stack:
        amqp_url = stack.enter_context(bench_vhost())
        empty_setup = prepare(stack, args, amqp_url, "empty")
        loaded_setup = prepare(stack, args, amqp_url, "loaded")
        print(f"loading {args.events:,} events over {args.days} days", file=sys.stderr)
        load_rate = bulk_load(loaded_setup.engine, loaded_setup.consumer_id, args.events, args.days)
        loaded_bytes = table_bytes(loaded_setup.engine)
        settle_write_back()
        empty, full = alternating_rounds([empty_setup, loaded_setup], args)
        print("archiving", file=sys.stderr)
        extra = run_archive(loaded_setup.settings, args.days // 2)
        extra.update(
            events_loaded=args.events,
            load_events_per_s=load_rate,
            table_bytes_loaded=loaded_bytes,
            bytes_per_event=loaded_bytes / args.events,
            archive_bytes_per_event=extra["archive_bytes"] / max(extra["archived_events"], 1),
            table_bytes_after_archive=table_bytes(loaded_setup.engine),
        )
    if args.json:
        print(json.dumps({"empty": empty, "loaded": full, **extra}, indent=2))
    else:
        print(report(empty, full, extra))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
