#!/usr/bin/env python3
"""The gateway's cost: GET /health and POST /customer/data through Traefik against direct.

    .venv/bin/python scripts/bench_gateway.py --connections 16 --duration 10 --rounds 2

Creates a fresh migrated database with one tenant (limits that never refuse), starts one
API instance (``fintegrate serve``) and, in front of it, the gateway exactly as
``fintegrate gateway`` runs it (same generated configuration and Traefik environment: the IP
budget plugin, errors, retry, failover, health check), except that the IP budget is raised
to ``--ip-budget`` requests per minute and burst so that it never refuses: the benchmark
measures the proxy, not the limit. Each round drives the instance directly and then through
the gateway (the order alternates), with the built-in load generator of ``fintegrate bench``
(``--rounds``) and then with ``wrk -t2`` (``--wrk-rounds``, from ``apt-get install wrk``).
Prints req/s, p50, p99 and CPU per phase and, per load generator, the throughput lost
through the gateway.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace

from service.bench import wrk as bench_wrk
from service.bench.loadgen import (
    Result,
    Target,
    drive,
    machine_cpu,
    process_tree_cpu,
    run_loop,
)
from service.bench.servers import (
    api_command,
    free_port,
    fresh_database,
    running_server,
    seed_tenant,
)
from service.config import load_settings
from service.gateway.runner import Gateway, GatewayOptions

NEVER_LIMITED = 10_000_000
MAX_LOST = 0.15  # the target: at most 15 % of the direct throughput lost
BODY = b'{"name": "Bench Customer", "email": "bench@example.com"}'


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=16, choices=range(1, 65))
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds, <= 60")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds, <= 10")
    parser.add_argument("--rounds", type=int, default=2, choices=range(0, 6))
    parser.add_argument("--wrk-rounds", type=int, default=2, choices=range(0, 6))
    parser.add_argument("--workers", type=int, default=1, choices=range(1, 5))
    parser.add_argument("--bcrypt-rounds", type=int, default=4, help="cost of the seeded key")
    parser.add_argument("--ip-budget", type=int, default=NEVER_LIMITED, help="per minute")
    parser.add_argument("--redis-url", default=load_settings().redis.url)
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 60 or not 0 <= args.warmup <= 10:
        parser.error("--duration must be within 1..60 and --warmup within 0..10 seconds")
    if args.rounds + args.wrk_rounds == 0:
        parser.error("nothing to measure: --rounds and --wrk-rounds are 0")
    if args.wrk_rounds and not bench_wrk.available():
        parser.error("--wrk-rounds needs wrk on PATH (apt-get install wrk)")
    return args


def targets_for(port: int, api_key: str, label: str) -> list[Target]:
    """The two requests measured, against ``port``."""
    host = f"Host: 127.0.0.1:{port}\r\n"
    health = f"GET /health HTTP/1.1\r\n{host}\r\n".encode()
    create = (
        f"POST /customer/data HTTP/1.1\r\n{host}X-API-Key: {api_key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
    ).encode()
    return [
        Target(f"GET /health {label}", port, health, b""),
        Target(f"POST /customer/data {label}", port, create, BODY),
    ]


@contextmanager
def gateway_in_front(upstream_port: int, args: argparse.Namespace) -> Iterator[Gateway]:
    settings = load_settings(
        gateway_rate_limit_per_minute=args.ip_budget, gateway_rate_limit_burst=args.ip_budget
    )
    options = GatewayOptions("127.0.0.1", free_port(), (f"http://127.0.0.1:{upstream_port}",))
    gateway = Gateway(settings.gateway, options).start()
    try:
        yield gateway
    finally:
        gateway.stop()


def measure_builtin(target: Target, pids: list[int], args: argparse.Namespace) -> Result:
    """One phase, with the CPU of the servers involved (API, and Traefik when proxied)."""
    cpu_before = sum(process_tree_cpu(pid) for pid in pids)
    machine_before = machine_cpu()
    generator_before = time.process_time()
    result = run_loop(drive(target, args.connections, args.warmup, args.duration))
    spent = args.duration + args.warmup
    machine_after = machine_cpu()
    return replace(
        result,
        generator_cpu=(time.process_time() - generator_before) / spent,
        server_cpu=(sum(process_tree_cpu(pid) for pid in pids) - cpu_before) / spent,
        machine_busy=(machine_after[0] - machine_before[0])
        / (machine_after[1] - machine_before[1]),
    )


def report(result: Result) -> str:
    unexpected = {code: n for code, n in result.statuses.items() if code not in (200, 201)}
    return (
        f"{result.name:<30} {result.rate:7.0f} req/s  p50 {result.percentile(0.5) * 1000:6.1f} ms"
        f"  p99 {result.percentile(0.99) * 1000:6.1f} ms  n {len(result.latencies):6d}"
        f"  other statuses {unexpected or 0}  cpu: servers {result.server_cpu:4.0%}"
        f" generator {result.generator_cpu:4.0%} machine {result.machine_busy:4.0%}"
    )


Phase = tuple[Target, list[int]]


def run_rounds(phases: list[Phase], args: argparse.Namespace) -> dict[str, list[Sample]]:
    """Both generators' rounds; per phase name the (req/s, p99 seconds) of each round."""
    results: dict[str, list[Sample]] = {}
    for generator, rounds in (("built-in", args.rounds), ("wrk", args.wrk_rounds)):
        for round_index in range(rounds):
            for target, pids in phases if round_index % 2 == 0 else phases[::-1]:
                sample = measure(target, pids, args, generator)
                results.setdefault(f"{generator} {target.name}", []).append(sample)
    return results


@dataclass(frozen=True)
class Sample:
    rate: float
    p99: float


def measure(target: Target, pids: list[int], args: argparse.Namespace, generator: str) -> Sample:
    if generator == "built-in":
        result = measure_builtin(target, pids, args)
        print(report(result), flush=True)
        return Sample(result.rate, result.percentile(0.99))
    return measure_wrk(target, pids, args)


def measure_wrk(target: Target, pids: list[int], args: argparse.Namespace) -> Sample:
    """One wrk phase after an unmeasured wrk warm-up, with the servers' CPU."""
    post, path = bool(target.body), target.headers.split()[1].decode()
    headers = {"X-API-Key": args.api_key} if post else {}
    options = {"threads": 2, "connections": args.connections, "path": path, "post": post}
    if args.warmup:
        bench_wrk.run(target.name, target.port, headers, seconds=args.warmup, **options)
    cpu_before, started = sum(process_tree_cpu(pid) for pid in pids), time.monotonic()
    result = bench_wrk.run(target.name, target.port, headers, seconds=args.duration, **options)
    cpu = (sum(process_tree_cpu(pid) for pid in pids) - cpu_before) / (time.monotonic() - started)
    print(
        f"wrk -t2 {target.name:<30} {result.rate:7.0f} req/s  p50 {result.p50 * 1000:6.1f} ms"
        f"  p99 {result.p99 * 1000:6.1f} ms  non-2xx {result.non_2xx}  cpu: servers {cpu:4.0%}"
        f" {result.socket_errors}",
        flush=True,
    )
    return Sample(result.rate, result.p99)


def summary(results: dict[str, list[Sample]]) -> list[str]:
    lines = []
    for generator in ("built-in", "wrk"):
        for request in ("GET /health", "POST /customer/data"):
            direct = results.get(f"{generator} {request} direct")
            proxied = results.get(f"{generator} {request} gateway")
            if not direct or not proxied:
                continue
            rate_d = statistics.mean(r.rate for r in direct)
            rate_g = statistics.mean(r.rate for r in proxied)
            p99_d = statistics.mean(r.p99 for r in direct) * 1000
            p99_g = statistics.mean(r.p99 for r in proxied) * 1000
            lost = 1 - rate_g / rate_d
            verdict = "met" if lost <= MAX_LOST else "NOT met"
            lines.append(
                f"[{generator}] {request:<20} direct {rate_d:6.0f} req/s p99 {p99_d:5.1f} ms | "
                f"gateway {rate_g:6.0f} req/s p99 {p99_g:5.1f} ms | throughput lost "
                f"{lost:5.1%} (target <= {MAX_LOST:.0%}: {verdict})"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with ExitStack() as stack:
        database = stack.enter_context(fresh_database(False))
        _, api_key = seed_tenant(database, args.bcrypt_rounds)
        args.api_key = api_key
        port = free_port()
        env = {"FINTEGRATE_DATABASE_URL": database, "FINTEGRATE_REDIS_URL": args.redis_url or ""}
        command = api_command(port, args.workers)
        api_pid = stack.enter_context(running_server(command, port, env))
        gateway = stack.enter_context(gateway_in_front(port, args))
        assert gateway.process is not None
        traefik_pid = gateway.process.pid
        print(
            f"{args.connections} connections, {args.workers} API worker(s), "
            f"{args.warmup:g} s warm-up + {args.duration:g} s, {args.rounds} round(s); "
            f"gateway IP budget {args.ip_budget}/min (never refuses)",
            flush=True,
        )
        direct = targets_for(port, api_key, "direct")
        proxied = targets_for(gateway.options.port, api_key, "gateway")
        phases = [(direct[0], [api_pid]), (proxied[0], [api_pid, traefik_pid])]
        phases += [(direct[1], [api_pid]), (proxied[1], [api_pid, traefik_pid])]
        results = run_rounds(phases, args)
    print("\n".join(summary(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
