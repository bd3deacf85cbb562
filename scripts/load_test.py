#!/usr/bin/env python3
"""Bounded load test for the gateway or the API: status histogram, req/s, latency percentiles.

Sends exactly ``--requests`` requests from ``--concurrency`` threads, rotating over the
given API keys, then prints what came back. A 429 is reported as ``429 gateway`` when the
gateway's error pages answered it (header ``X-Fintegrate-Edge``: the IP budget, or a plain
text 429 from a bare Traefik) and ``429 api`` when the API did (the per-key limit); the
report ends with the share of each.

    python scripts/load_test.py --url http://127.0.0.1:8000/customer/data \\
        --api-key "$KEY_A" --api-key "$KEY_B" --requests 600 --concurrency 8

Loopback targets only, unless ``--allow-remote``.
"""

from __future__ import annotations

import argparse
import ipaddress
import itertools
import statistics
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

MAX_REQUESTS = 100_000
MAX_CONCURRENCY = 64
TRANSPORT_ERROR = "error"
EDGE_HEADER = "X-Fintegrate-Edge"  # service/gateway/pages.py marks the gateway's own answers
GATEWAY_429, API_429 = "429 gateway", "429 api"


@dataclass(frozen=True)
class Outcome:
    """One request: its label in the histogram and how long it took."""

    label: str
    seconds: float


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Bounded load test: status histogram, req/s, latency."
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000/customer/data")
    parser.add_argument(
        "--api-key", action="append", default=[], help="X-API-Key; repeat to rotate keys"
    )
    parser.add_argument("--requests", type=int, default=200, help=f"total, <= {MAX_REQUESTS}")
    parser.add_argument("--concurrency", type=int, default=4, help=f"<= {MAX_CONCURRENCY}")
    parser.add_argument("--method", choices=("GET", "POST"), default="GET")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    parser.add_argument("--allow-remote", action="store_true", help="allow a non-loopback host")
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= MAX_REQUESTS:
        parser.error(f"--requests must be between 1 and {MAX_REQUESTS}")
    if not 1 <= args.concurrency <= MAX_CONCURRENCY:
        parser.error(f"--concurrency must be between 1 and {MAX_CONCURRENCY}")
    if not args.allow_remote and not is_loopback(args.url):
        parser.error(f"{args.url} is not a loopback address; pass --allow-remote to load it")
    return args


def is_loopback(url: str) -> bool:
    """True for localhost and loopback IP literals (no DNS lookup)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def label_of(response: httpx.Response) -> str:
    """The status code, with 429s split by which layer refused."""
    if response.status_code != 429:
        return str(response.status_code)
    if EDGE_HEADER in response.headers:
        return GATEWAY_429
    is_envelope = response.headers.get("content-type", "").startswith("application/json")
    return API_429 if is_envelope else GATEWAY_429


class LoadRunner:
    """Runs the bounded request plan on a thread pool; one httpx client per thread."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.keys = itertools.cycle(args.api_key or [None])
        self.keys_lock = threading.Lock()
        self.local = threading.local()
        self.clients: list[httpx.Client] = []

    def client(self) -> httpx.Client:
        client = getattr(self.local, "client", None)
        if client is None:
            client = httpx.Client(timeout=self.args.timeout)
            self.local.client = client
            with self.keys_lock:
                self.clients.append(client)
        return client

    def send(self, index: int) -> Outcome:
        with self.keys_lock:
            key = next(self.keys)
        headers = {"X-API-Key": key} if key else {}
        body = {"name": f"load test {index}"} if self.args.method == "POST" else None
        started = time.perf_counter()
        try:
            response = self.client().request(
                self.args.method, self.args.url, headers=headers, json=body
            )
            label = label_of(response)
        except httpx.HTTPError:
            label = TRANSPORT_ERROR
        return Outcome(label, time.perf_counter() - started)

    def run(self) -> tuple[list[Outcome], float]:
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=self.args.concurrency) as pool:
            outcomes = list(pool.map(self.send, range(self.args.requests)))
        elapsed = time.perf_counter() - started
        for client in self.clients:
            client.close()
        return outcomes, elapsed


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    """p50/p90/p99 in milliseconds."""
    if len(seconds) < 2:
        value = seconds[0] * 1000 if seconds else 0.0
        return {"p50": value, "p90": value, "p99": value}
    cuts = statistics.quantiles(seconds, n=100, method="inclusive")
    return {"p50": cuts[49] * 1000, "p90": cuts[89] * 1000, "p99": cuts[98] * 1000}


def report(args: argparse.Namespace, outcomes: list[Outcome], elapsed: float) -> str:
    histogram = Counter(outcome.label for outcome in outcomes)
    latency = percentiles_ms([outcome.seconds for outcome in outcomes])
    keys = len(args.api_key) or "no"
    lines = [
        f"{args.method} {args.url}: {len(outcomes)} requests, concurrency {args.concurrency}, "
        f"{keys} API key(s)",
        "status histogram:",
        *(f"  {label:>12}  {count}" for label, count in sorted(histogram.items())),
        f"throughput: {len(outcomes) / elapsed:.1f} req/s over {elapsed:.2f} s",
        "latency ms: " + "  ".join(f"{name} {value:.1f}" for name, value in latency.items()),
        share_line(histogram, len(outcomes)),
    ]
    return "\n".join(lines)


def share_line(histogram: Counter[str], total: int) -> str:
    """The share of requests each layer refused with 429."""
    gateway, api = histogram[GATEWAY_429], histogram[API_429]
    return (
        f"429 share: gateway (IP budget) {100 * gateway / total:.1f}% ({gateway}), "
        f"api (per-key limit) {100 * api / total:.1f}% ({api})"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    outcomes, elapsed = LoadRunner(args).run()
    print(report(args, outcomes, elapsed))
    return 1 if all(outcome.label == TRANSPORT_ERROR for outcome in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
