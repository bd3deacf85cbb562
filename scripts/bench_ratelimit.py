#!/usr/bin/env python3
"""What one rate-limit decision costs: healthy Redis, and Redis refused or silent (fail-open).

    .venv/bin/python scripts/bench_ratelimit.py --redis-url redis://127.0.0.1:6379/15

Uses (and flushes) the given Redis DB. The silent case runs through a loopback TCP proxy
that accepts and never answers; the first call there pays the socket timeout, the rest
are skipped by the circuit breaker.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.config import Settings, load_settings
from service.ratelimit.limiter import RateLimiter
from tests.support.tcp_proxy import TcpProxy


async def time_checks(limiter: RateLimiter, count: int) -> list[float]:
    """Seconds taken by each of ``count`` checks on one bucket, one at a time."""
    timings = []
    for _ in range(count):
        started = time.perf_counter()
        await limiter.check("bench", 1_000_000, 1_000_000)
        timings.append(time.perf_counter() - started)
    return timings


def summary(name: str, timings: list[float]) -> str:
    cuts = statistics.quantiles(timings, n=100, method="inclusive")
    return (
        f"{name:<28} first {timings[0] * 1000:7.2f} ms   p50 {cuts[49] * 1000:6.3f} ms   "
        f"p99 {cuts[98] * 1000:6.3f} ms   max {max(timings) * 1000:7.2f} ms"
    )


def run_case(name: str, settings: Settings, count: int) -> None:
    asyncio.run(time_case(name, settings, count))


async def time_case(name: str, settings: Settings, count: int) -> None:
    limiter = RateLimiter(settings.redis)
    try:
        timings = await time_checks(limiter, count)
        print(summary(name, timings), f"  fail-open {limiter.fail_open_total}")
    finally:
        await limiter.close()


def main() -> int:
    parser = argparse.ArgumentParser(description="Time rate-limit decisions.")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--checks", type=int, default=2000)
    args = parser.parse_args()
    redis.Redis.from_url(args.redis_url).flushdb()
    base = load_settings(environment="test", redis_url=args.redis_url)
    print(f"{args.checks} checks per case, redis_timeout_seconds={base.redis.timeout_seconds}")
    run_case("healthy Redis", base, args.checks)
    run_case("no Redis configured", base.updated({"redis_url": None}), args.checks)
    refused = TcpProxy("127.0.0.1", 6379).start()
    refused.refuse()
    silent = TcpProxy("127.0.0.1", 6379).start()
    silent.blackhole()
    try:
        for name, proxy in (("Redis refusing connections", refused), ("Redis silent", silent)):
            run_case(
                name,
                base.updated({"redis_url": proxy.url_for(args.redis_url)}),
                args.checks,
            )
    finally:
        refused.stop()
        silent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
