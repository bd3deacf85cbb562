#!/usr/bin/env python3
"""Instructions per POST /customer/data, in process: the API against the asyncpg baseline.

    .venv/bin/python scripts/bench_instructions.py [--requests 10] [--targets asyncpg,api]

Requests per second on this VM swing by 3x between hours (docs/benchmarks.md), so code
changes of a few percent cannot be seen in ``fintegrate bench api`` alone. This counts them:
each target runs in a child process under ``valgrind --tool=callgrind`` with
instrumentation off, builds its ASGI app (the real ``create_app`` or the
``create_async_app`` baseline of ``service/bench/baseline_app.py``) on a fresh database with one
tenant, warms it with one pass, then switches instrumentation on (``callgrind_control``)
for one pass of ``--connections`` concurrent tasks sending ``--requests`` requests each
straight to the app (no HTTP, no sockets between client and app; PostgreSQL and Redis are
real), and off again. Instructions are counted in user space of the child only: neither
uvicorn's HTTP layer nor kernel time is in the figure (the baseline's four PostgreSQL round
trips cost more kernel time than the API's one statement and one Redis round trip), so the
ratio of the counts is lower than the req/s ratio under load. On an idle machine repeats
agree within 0.1 %. Needs valgrind (on every machine of this kind).

With ``OTEL_EXPORTER_OTLP_ENDPOINT`` set the app traces every request; its spans are
flushed before the count starts and again before it stops, so the count holds the export
of exactly the measured requests' spans (encoding and the HTTP post), whatever the batch
timer would have done.

With ``--http`` the servers run as ``fintegrate bench api`` runs them (``fintegrate serve`` and
uvicorn on the baseline, one worker each) under callgrind, and the same number of
requests reaches them over keep-alive HTTP connections: the count then includes uvicorn's
HTTP parsing and writing, everything of the server's CPU but the kernel's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

TARGETS = ("asyncpg", "api")
COLLECTED = re.compile(r"Collected : (\d+)")
SERVER_TIMEOUT = 180.0  # start-up and shutdown under valgrind
# Under valgrind a Redis round trip takes longer than the default 50 ms budget; a check
# that failed open would skip Redis and count too few instructions.
SLOW_REDIS_TIMEOUT = 5.0
App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10, help="per connection (10)")
    parser.add_argument("--connections", type=int, default=16, help="concurrent tasks (16)")
    parser.add_argument("--targets", default=",".join(TARGETS), help="asyncpg,api")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--http", action="store_true", help="servers over HTTP (see above)")
    parser.add_argument("--child", choices=TARGETS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def request_scope(api_key: str, body: bytes) -> dict[str, Any]:
    headers = [
        (b"host", b"bench"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-api-key", api_key.encode()),
    ]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/customer/data",
        "raw_path": b"/customer/data",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
        "state": {},
    }


async def post_customer(app: App, api_key: str, number: int) -> int:
    """One POST /customer/data straight into the ASGI app; its status."""
    body = json.dumps({"name": "Ada", "email": f"ada{number}-{uuid.uuid4().hex[:8]}@x.io"})
    messages = [{"type": "http.request", "body": body.encode(), "more_body": False}]
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(request_scope(api_key, body.encode()), receive, send)
    return statuses[0]


async def one_pass(app: App, api_key: str, connections: int, requests: int) -> None:
    async def connection(number: int) -> list[int]:
        return [await post_customer(app, api_key, number * requests + n) for n in range(requests)]

    all_created(await asyncio.gather(*map(connection, range(connections))))


def all_created(per_connection: list[list[int]]) -> None:
    """Stop unless every request of the pass answered 201."""
    statuses = {status for statuses in per_connection for status in statuses}
    if statuses != {201}:
        raise SystemExit(f"unexpected statuses {sorted(statuses)}")


def per_request(callgrind_output: str, target: str, args: argparse.Namespace) -> float:
    """Millions of instructions per measured request, from callgrind's ``Collected`` line."""
    found = COLLECTED.search(callgrind_output)
    if found is None:
        raise SystemExit(f"{target}: the callgrind run failed:\n{callgrind_output[-2000:]}")
    return int(found.group(1)) / (args.requests * args.connections) / 1e6


def build_app(target: str, database_url: str, consumer_id: str, redis_url: str) -> Any:
    from service.app import create_app
    from service.config import load_settings

    if target == "api":
        settings = load_settings(
            environment="test",
            database_url=database_url,
            redis_url=redis_url,
            redis_timeout_seconds=SLOW_REDIS_TIMEOUT,
        )
        return create_app(settings)
    os.environ.update(BENCH_CONSUMER_ID=consumer_id, FINTEGRATE_DATABASE_URL=database_url)
    from service.bench import baseline_app

    return baseline_app.create_async_app()


async def measure_child(args: argparse.Namespace, database_url: str) -> None:
    from service.bench.servers import seed_tenant
    from service.kit import tracing

    consumer_id, api_key = seed_tenant(database_url, 4)
    app = build_app(args.child, database_url, consumer_id, args.redis_url)
    async with app.router.lifespan_context(app):
        await one_pass(app, api_key, args.connections, args.requests)
        tracing.flush()  # the warm-up's spans are exported outside the count
        toggle(os.getpid(), "on")
        await one_pass(app, api_key, args.connections, args.requests)
        tracing.flush()  # the measured spans' export is in it, whatever the batch timer
        toggle(os.getpid(), "off")
        limiter = getattr(app.state, "rate_limiter", None)
        if limiter is not None and limiter.fail_open_total:
            raise SystemExit(f"{limiter.fail_open_total} rate-limit checks failed open")


def run_child(args: argparse.Namespace) -> None:
    import uvloop

    from service.bench.servers import fresh_database

    with fresh_database(keep=False) as url:
        uvloop.run(measure_child(args, url))


def count(target: str, args: argparse.Namespace) -> float:
    """Millions of instructions per request of ``target`` (one child under callgrind)."""
    command = [
        *callgrind_command(),
        sys.executable,
        __file__,
        "--child",
        target,
        f"--requests={args.requests}",
        f"--connections={args.connections}",
        f"--redis-url={args.redis_url}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{target}: the callgrind run failed:\n{done.stderr[-2000:]}")
    return per_request(done.stderr, target, args)


async def http_pass(port: int, request: bytes, connections: int, requests: int) -> None:
    """``requests`` POSTs on each of ``connections`` keep-alive connections, back to back."""
    from service.bench.loadgen import content_length

    async def connection() -> list[int]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        statuses = []
        for _ in range(requests):
            writer.write(request)
            answer = await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(content_length(answer))
            statuses.append(int(answer[9:12]))
        writer.close()
        return statuses

    all_created(await asyncio.gather(*(connection() for _ in range(connections))))


def count_http(target: str, args: argparse.Namespace) -> float:
    """Millions of instructions per request of ``target`` served over HTTP under callgrind."""
    from service.bench import servers
    from service.bench.api import FAIL_OPEN_SERIES
    from service.bench.loadgen import BODY, request_head, run_loop

    with tempfile.TemporaryDirectory() as directory, ExitStack() as stack:
        log = Path(directory) / "callgrind.log"
        database = stack.enter_context(servers.fresh_database(keep=False))
        consumer_id, api_key = servers.seed_tenant(database, 4)
        env = {"FINTEGRATE_DATABASE_URL": database, "BENCH_CONSUMER_ID": consumer_id}
        extra = ""
        if target == "api":
            env.update(
                FINTEGRATE_REDIS_URL=args.redis_url,
                FINTEGRATE_REDIS_TIMEOUT_SECONDS=str(SLOW_REDIS_TIMEOUT),
            )
            extra = f"X-API-Key: {api_key}\r\n"
        port = servers.free_port()
        command = [*callgrind_command(log), sys.executable]
        command += (
            servers.api_command(port, 1)
            if target == "api"
            else servers.baseline_command("create_async_app", port, 1)
        )
        with servers.running_server(command, port, env, timeout=SERVER_TIMEOUT) as pid:
            request = request_head(port, extra) + BODY
            run_loop(http_pass(port, request, args.connections, args.requests))
            toggle(pid, "on")
            run_loop(http_pass(port, request, args.connections, args.requests))
            toggle(pid, "off")
            if target == "api" and fail_open_count(port, FAIL_OPEN_SERIES):
                raise SystemExit("rate-limit checks failed open: the count would be too low")
        return per_request(log.read_text(), target, args)


def callgrind_command(log: Path | None = None) -> list[str]:
    command = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
    command += ["--callgrind-out-file=/dev/null"]
    return [*command, f"--log-file={log}"] if log else command


def toggle(pid: int, state: str) -> None:
    subprocess.run(["callgrind_control", "-i", state, str(pid)], check=True, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        run_child(args)
        return 0
    missing = [tool for tool in ("valgrind", "callgrind_control") if shutil.which(tool) is None]
    if missing:
        print(f"needs {' and '.join(missing)} on PATH (apt-get install valgrind)", file=sys.stderr)
        return 2
    requests = args.requests * args.connections
    how = "over HTTP" if args.http else "in process"
    print(f"POST /customer/data {how}: {args.connections} concurrent, {requests} measured")
    figures = {}
    for target in args.targets.split(","):
        figures[target] = count_http(target, args) if args.http else count(target, args)
        print(f"{target:<10} {figures[target]:6.3f} M instructions per request")
    if {"api", "asyncpg"} <= figures.keys():
        ratio = figures["asyncpg"] / figures["api"]
        print(f"asyncpg/api {ratio:.2f} ({how}; kernel time is not counted)")
    return 0


def fail_open_count(port: int, series: str) -> float:
    """Rate-limit checks that skipped Redis so far, read off the server's /metrics."""
    import httpx

    lines = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(series))


if __name__ == "__main__":
    raise SystemExit(main())
