#!/usr/bin/env python3
"""POST /customer/data under load: the real API against two plain FastAPI baselines.

    .venv/bin/python scripts/bench_api.py --rounds 3 --wrk-rounds 2

Creates one fresh database per server (migrated with ``service.migrations.runner.apply``), seeds
one tenant in each (its key hashed at ``--bcrypt-rounds``, rate limits high enough never
to refuse), starts the real API (``fintegrate serve``) and the baselines of
``scripts/bench_baseline_app.py`` (``sqlalchemy``: a ``def`` endpoint on a SQLAlchemy
engine; ``asyncpg``: an ``async def`` endpoint on an asyncpg pool; both the same two inserts
in one transaction, no auth, no middleware) as subprocesses on loopback with the same
number of workers. Each is driven with ``--connections`` keep-alive connections for
``--warmup`` + ``--duration`` seconds by the built-in load generator (``--rounds``, order
alternating), then by ``wrk -t2`` (``--wrk-rounds``). Prints req/s, p50 and p99 per phase,
the ratios api/baseline of the mean req/s per load generator against their targets
(``TARGETS``) and the API's worst p99 against ``P99_TARGET_MS``. Drops the databases.
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

import bench_profile
import bench_wrk
from bench_loadgen import (
    Result,
    Target,
    drive,
    machine_cpu,
    process_tree_cpu,
    request_head,
    run_loop,
)

from service.config import Settings, shipped_driver_url
from service.consumers import service as consumers
from service.consumers.schemas import ConsumerCreate
from service.kit.db import transaction
from service.kit.request import EventOrigin
from service.migrations import runner as migrations

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
# The baselines: plain sync FastAPI on SQLAlchemy, plain async FastAPI on asyncpg.
BASELINE_FACTORIES = {"sqlalchemy": "create_app", "asyncpg": "create_async_app"}
# Minimum ratio api/baseline of the mean req/s, and the API's p99 bound (16 connections).
TARGETS = {"sqlalchemy": 1.3, "asyncpg": 0.85}
P99_TARGET_MS = 30.0
WRK_THREADS = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=1, choices=range(1, 5))
    parser.add_argument("--connections", type=int, default=16, choices=range(1, 65))
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds, <= 60")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds, <= 10")
    parser.add_argument("--rounds", type=int, default=1, choices=range(0, 6))
    parser.add_argument(
        "--wrk-rounds",
        type=int,
        default=0,
        choices=range(0, 6),
        help="rounds of wrk -t2 after the built-in generator's (wrk from apt-get install wrk)",
    )
    parser.add_argument(
        "--bcrypt-rounds",
        type=int,
        default=Settings.model_fields["bcrypt_rounds"].default,
        help="cost of the seeded key (default: the service default)",
    )
    parser.add_argument("--redis-url", default=Settings().redis_url)
    parser.add_argument("--keep-databases", action="store_true")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="one more API phase under py-spy: collapsed stacks to FILE, shares printed",
    )
    parser.add_argument(
        "--baselines",
        default="sqlalchemy,asyncpg",
        type=lambda value: [name for name in value.split(",") if name],
        help="comma-separated baselines: sqlalchemy, asyncpg",
    )
    parser.add_argument(
        "--api-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the real API only (repeat), e.g. to try a setting",
    )
    args = parser.parse_args(argv)
    if not args.baselines or set(args.baselines) - set(BASELINE_FACTORIES):
        parser.error(f"--baselines: one or more of {', '.join(BASELINE_FACTORIES)}")
    if args.rounds + args.wrk_rounds == 0 and not args.profile:
        parser.error("nothing to measure: --rounds and --wrk-rounds are 0, no --profile")
    if args.profile and not bench_profile.available():
        parser.error("--profile needs py-spy (.venv/bin/pip install py-spy)")
    if args.wrk_rounds and not bench_wrk.available():
        parser.error("--wrk-rounds needs wrk on PATH (apt-get install wrk)")
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
def running_server(
    command: list[str], port: int, env: dict[str, str], timeout: float = START_TIMEOUT_SECONDS
) -> Iterator[int]:
    """Starts the server, waits for ``/health``, yields its pid, stops it (SIGTERM)."""
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env})
    try:
        wait_healthy(port, process, timeout)
        yield process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def wait_healthy(
    port: int, process: subprocess.Popen[bytes], timeout: float = START_TIMEOUT_SECONDS
) -> None:
    deadline = time.monotonic() + timeout
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


def measure_wrk(
    target: Target, headers: dict[str, str], server_pid: int, args: argparse.Namespace
) -> bench_wrk.WrkResult:
    """One wrk phase (after an unmeasured wrk warm-up) with the server tree's CPU."""
    options = {"threads": WRK_THREADS, "connections": args.connections}
    if args.warmup >= 1:
        bench_wrk.run(target.name, target.port, headers, seconds=args.warmup, **options)
    before = process_tree_cpu(server_pid)
    result = bench_wrk.run(target.name, target.port, headers, seconds=args.duration, **options)
    spent = max(1, round(args.duration))
    return replace(result, server_cpu=(process_tree_cpu(server_pid) - before) / spent)


def report_wrk(result: bench_wrk.WrkResult) -> str:
    cpu_ms_per_request = result.server_cpu / max(result.rate, 1e-9) * 1000
    return (
        f"{result.name:<10} {result.rate:8.0f} req/s  p50 {result.p50 * 1000:6.1f} ms"
        f"  p99 {result.p99 * 1000:6.1f} ms  non-2xx {result.non_2xx}"
        f"  server cpu {result.server_cpu:4.0%} ({cpu_ms_per_request:.2f} ms/req)"
        + (f"  {result.socket_errors}" if result.socket_errors else "")
    )


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def summary(generator: str, rates: dict[str, list[float]], p99s: list[float]) -> list[str]:
    """The ratios and the p99 of one load generator's phases against the targets."""
    if not rates["api"]:
        return []
    api_rate = statistics.mean(rates["api"])
    lines = []
    for name, target in TARGETS.items():
        if rates.get(name):
            ratio = api_rate / statistics.mean(rates[name])
            lines.append(
                f"[{generator}] ratio api/{name} {ratio:.2f} (mean req/s of "
                f"{len(rates['api'])} round(s); target >= {target}: {verdict(ratio >= target)})"
            )
    worst = max(p99s) * 1000
    lines.append(
        f"[{generator}] api p99 {min(p99s) * 1000:.1f}-{worst:.1f} ms "
        f"(target <= {P99_TARGET_MS:g} ms: {verdict(worst <= P99_TARGET_MS)})"
    )
    return lines


def report(result: Result) -> str:
    errors = {code: n for code, n in result.statuses.items() if code != 201}
    cpu_ms_per_request = result.server_cpu / max(result.rate, 1e-9) * 1000
    return (
        f"{result.name:<10} {result.rate:8.0f} req/s  p50 {result.percentile(0.5) * 1000:6.1f} ms"
        f"  p99 {result.percentile(0.99) * 1000:6.1f} ms  requests {len(result.latencies):6d}"
        f"  non-201 {errors or 0}  cpu: generator {result.generator_cpu:4.0%}"
        f" server {result.server_cpu:4.0%} ({cpu_ms_per_request:.2f} ms/req)"
        f" machine {result.machine_busy:4.0%}"
        + ("" if result.fail_open is None else f"  rate-limit fail-open {result.fail_open}")
    )


def start_servers(
    args: argparse.Namespace, stack: ExitStack
) -> tuple[list[Target], list[int], dict[str, dict[str, str]]]:
    """Fresh databases, a seeded tenant in each, and every server running on loopback.

    Returns the targets, their pids and the extra request headers of each (the API key).
    """
    targets, pids, headers = [], [], {}
    for name in [*args.baselines, "api"]:
        database = stack.enter_context(fresh_database(args.keep_databases))
        consumer_id, api_key = seed_tenant(database, args.bcrypt_rounds)
        env = {"FINTEGRATE_DATABASE_URL": database, "BENCH_CONSUMER_ID": consumer_id}
        extra, headers[name] = "", {}
        if name == "api":
            env = {
                "FINTEGRATE_DATABASE_URL": database,
                "FINTEGRATE_REDIS_URL": args.redis_url or "",
                **dict(item.split("=", 1) for item in args.api_env),
            }
            extra, headers[name] = f"X-API-Key: {api_key}\r\n", {"X-API-Key": api_key}
        port = free_port()
        pids.append(
            stack.enter_context(running_server(server_command(name, port, args.workers), port, env))
        )
        targets.append(Target(name, port, request_head(port, extra)))
    return targets, pids, headers


def alternating(count: int, rounds: int) -> list[list[int]]:
    """The phase order of each round: forwards, then backwards, and so on."""
    return [list(range(count))[:: -1 if index % 2 else 1] for index in range(rounds)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [*args.baselines, "api"]
    own: dict[str, list[float]] = {name: [] for name in names}
    wrk: dict[str, list[float]] = {name: [] for name in names}
    own_p99s: list[float] = []
    wrk_p99s: list[float] = []
    with ExitStack() as stack:
        targets, pids, headers = start_servers(args, stack)
        print(
            f"POST /customer/data: {args.connections} connections, {args.workers} worker(s), "
            f"{args.warmup:g} s warm-up + {args.duration:g} s, bcrypt cost {args.bcrypt_rounds}",
            flush=True,
        )
        for order in alternating(len(targets), args.rounds):
            for index in order:
                result = measure(targets[index], pids[index], args)
                own[result.name].append(result.rate)
                if result.name == "api":
                    own_p99s.append(result.percentile(0.99))
                print(report(result), flush=True)
        for order in alternating(len(targets), args.wrk_rounds):
            for index in order:
                target = targets[index]
                measured = measure_wrk(target, headers[target.name], pids[index], args)
                wrk[measured.name].append(measured.rate)
                if measured.name == "api":
                    wrk_p99s.append(measured.p99)
                print(f"wrk -t{WRK_THREADS} {report_wrk(measured)}", flush=True)
        if args.profile:
            api = names.index("api")
            print(f"warm-up  {report(measure(targets[api], pids[api], args))}", flush=True)
            with bench_profile.recording(pids[api], args.profile, args.warmup + args.duration):
                print(f"profiled {report(measure(targets[api], pids[api], args))}", flush=True)
    for line in [*summary("built-in", own, own_p99s), *summary("wrk", wrk, wrk_p99s)]:
        print(line)
    if args.profile:
        print("\n".join(bench_profile.summary(args.profile)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
