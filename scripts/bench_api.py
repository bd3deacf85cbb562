#!/usr/bin/env python3
"""POST /customer/data under load: the real API against the plainest FastAPI baseline.

    .venv/bin/python scripts/bench_api.py --workers 1 --connections 16 --duration 10

Creates two fresh databases (migrated with ``service.migrations.apply``), seeds one tenant
in each (its key hashed at ``--bcrypt-rounds``, rate limits high enough never to refuse),
starts the real API (``fintegrate serve``) and the baseline (``scripts/bench_baseline_app.py``)
as subprocesses on loopback with the same number of workers, then drives each with
``--connections`` keep-alive connections for ``--warmup`` + ``--duration`` seconds (rounds
alternate the order). Prints req/s, p50 and p99 for both and the ratio real/baseline, with
the CPU used by the load generator and the servers. Drops the databases at the end.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_loadgen import (
    Result,
    Target,
    drive,
    machine_cpu,
    process_tree_cpu,
    request_head,
    run_loop,
)

from service import migrations
from service.config import Settings, shipped_driver_url
from service.consumers import service as consumers
from service.consumers.schemas import ConsumerCreate
from service.db import transaction
from service.events.schemas import EventOrigin

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = shipped_driver_url(
    os.environ.get(
        "FINTEGRATE_BENCH_PG_URL",
        "postgresql://fintegrate_user:fintegrate_pass@127.0.0.1:5432/postgres",
    )
)
NEVER_LIMITED = 1_000_000
FAIL_OPEN_SERIES = 'fintegrate_ratelimit_fail_open_total{check="rate_limit"}'
START_TIMEOUT_SECONDS = 30.0
# The baseline (plain sync FastAPI) and the reference on the API's own driver.
BASELINE_FACTORIES = {"baseline": "create_app", "asyncpg-ref": "create_async_app"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=1, choices=range(1, 5))
    parser.add_argument("--connections", type=int, default=16, choices=range(1, 65))
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds, <= 60")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds, <= 10")
    parser.add_argument("--rounds", type=int, default=1, choices=range(1, 6))
    parser.add_argument(
        "--bcrypt-rounds",
        type=int,
        default=Settings.model_fields["bcrypt_rounds"].default,
        help="cost of the seeded key (default: the service default)",
    )
    parser.add_argument("--redis-url", default=Settings().redis_url)
    parser.add_argument("--keep-databases", action="store_true")
    parser.add_argument(
        "--baselines",
        default="baseline,asyncpg-ref",
        type=lambda value: [name for name in value.split(",") if name],
        help="comma-separated: baseline (the plain sync target), asyncpg-ref (reference)",
    )
    parser.add_argument(
        "--api-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the real API only (repeat), e.g. to try a setting",
    )
    args = parser.parse_args(argv)
    unknown = set(args.baselines) - set(BASELINE_FACTORIES)
    if unknown or "baseline" not in args.baselines:
        parser.error(f"--baselines must include baseline; known: {', '.join(BASELINE_FACTORIES)}")
    if not 1 <= args.duration <= 60 or not 0 <= args.warmup <= 10:
        parser.error("--duration must be within 1..60 and --warmup within 0..10 seconds")
    return args


@contextmanager
def fresh_database(keep: bool) -> Iterator[str]:
    """A new migrated database; dropped afterwards unless ``keep``."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"bench_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url)
    try:
        migrations.apply(engine)
        engine.dispose()
        yield url
    finally:
        engine.dispose()
        if not keep:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def seed_tenant(database_url: str, bcrypt_rounds: int) -> tuple[str, str]:
    """A tenant whose limits never refuse; returns ``(consumer_id, api_key)``."""
    engine = create_engine(database_url)
    body = ConsumerCreate(
        name=f"bench_{uuid.uuid4().hex[:10]}",
        rate_limit_per_minute=NEVER_LIMITED,
        rate_limit_burst=NEVER_LIMITED,
    )
    with transaction(engine) as connection:
        created = consumers.create_consumer(
            connection, body, consumers.new_key(bcrypt_rounds), EventOrigin("bench_api.py")
        )
    engine.dispose()
    return str(created.consumer_id), created.api_key


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def server_command(kind: str, port: int, workers: int) -> list[str]:
    """``fintegrate serve`` for the API, uvicorn on the baseline module for a baseline."""
    common = ["--port", str(port), "--workers", str(workers), "--log-level", "warning"]
    if kind == "api":
        return [str(ROOT / ".venv/bin/fintegrate"), "serve", "--host", "127.0.0.1", *common]
    return [
        str(ROOT / ".venv/bin/uvicorn"),
        "--app-dir",
        str(ROOT / "scripts"),
        f"bench_baseline_app:{BASELINE_FACTORIES[kind]}",
        "--factory",
        "--host",
        "127.0.0.1",
        *common,
    ]


@contextmanager
def running_server(command: list[str], port: int, env: dict[str, str]) -> Iterator[int]:
    """Starts the server, waits for ``/health``, yields its pid, stops it (SIGTERM)."""
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env})
    try:
        wait_healthy(port, process)
        yield process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def wait_healthy(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{process.args!r} did not become healthy on port {port}")


def measure(target: Target, server_pid: int, args: argparse.Namespace) -> Result:
    """One phase with the CPU used by this process, the server tree and the machine."""
    fail_open_before = fail_open_total(target.port)
    cpu_before, server_before = time.process_time(), process_tree_cpu(server_pid)
    machine_before = machine_cpu()
    result = run_loop(drive(target, args.connections, args.warmup, args.duration))
    machine_after = machine_cpu()
    spent = args.duration + args.warmup
    fail_open_after = fail_open_total(target.port)
    return replace(
        result,
        generator_cpu=(time.process_time() - cpu_before) / spent,
        server_cpu=(process_tree_cpu(server_pid) - server_before) / spent,
        machine_busy=(machine_after[0] - machine_before[0])
        / (machine_after[1] - machine_before[1]),
        fail_open=None
        if fail_open_before is None or fail_open_after is None
        else fail_open_after - fail_open_before,
    )


def fail_open_total(port: int) -> int | None:
    """Rate-limit decisions that skipped Redis so far (one worker's /metrics); None if absent."""
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    if response.status_code != 200:
        return None
    lines = response.text.splitlines()
    counts = [line.rsplit(" ", 1)[1] for line in lines if line.startswith(FAIL_OPEN_SERIES)]
    return int(sum(float(count) for count in counts))


def report(result: Result) -> str:
    errors = {code: n for code, n in result.statuses.items() if code != 201}
    cpu_ms_per_request = result.server_cpu / max(result.rate, 1e-9) * 1000
    return (
        f"{result.name:<9} {result.rate:8.0f} req/s  p50 {result.percentile(0.5) * 1000:6.1f} ms"
        f"  p99 {result.percentile(0.99) * 1000:6.1f} ms  requests {len(result.latencies):6d}"
        f"  non-201 {errors or 0}  cpu: generator {result.generator_cpu:4.0%}"
        f" server {result.server_cpu:4.0%} ({cpu_ms_per_request:.2f} ms/req)"
        f" machine {result.machine_busy:4.0%}"
        + ("" if result.fail_open is None else f"  rate-limit fail-open {result.fail_open}")
    )


def start_servers(args: argparse.Namespace, stack: ExitStack) -> tuple[list[Target], list[int]]:
    """Fresh databases, a seeded tenant in each, and every server running on loopback."""
    targets, pids = [], []
    for name in [*args.baselines, "api"]:
        database = stack.enter_context(fresh_database(args.keep_databases))
        consumer_id, api_key = seed_tenant(database, args.bcrypt_rounds)
        env = {"FINTEGRATE_DATABASE_URL": database, "BENCH_CONSUMER_ID": consumer_id}
        extra = ""
        if name == "api":
            env = {
                "FINTEGRATE_DATABASE_URL": database,
                "FINTEGRATE_REDIS_URL": args.redis_url or "",
                **dict(item.split("=", 1) for item in args.api_env),
            }
            extra = f"X-API-Key: {api_key}\r\n"
        port = free_port()
        pids.append(
            stack.enter_context(running_server(server_command(name, port, args.workers), port, env))
        )
        targets.append(Target(name, port, request_head(port, extra)))
    return targets, pids


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rates: dict[str, list[float]] = {name: [] for name in [*args.baselines, "api"]}
    with ExitStack() as stack:
        targets, pids = start_servers(args, stack)
        print(
            f"POST /customer/data: {args.connections} connections, {args.workers} worker(s), "
            f"{args.warmup:g} s warm-up + {args.duration:g} s, bcrypt cost {args.bcrypt_rounds}",
            flush=True,
        )
        for round_index in range(args.rounds):
            order = list(range(len(targets)))
            if round_index % 2:
                order.reverse()
            for index in order:
                result = measure(targets[index], pids[index], args)
                rates[result.name].append(result.rate)
                print(report(result), flush=True)
    api_rate = statistics.mean(rates["api"])
    for name in args.baselines:
        ratio = api_rate / statistics.mean(rates[name])
        label = "the target" if name == "baseline" else "reference"
        print(f"ratio api/{name} (mean req/s of {args.rounds} round(s), {label}): {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
