"""``fintegrate bench webhooks``: ``webhooks deliver`` against a plain httpx loop.

Throughput: for 1 and for ``endpoints`` loopback receivers (in a process of their own, so
neither side shares its GIL with them), each round seeds fresh events of a fresh tenant
(the fan-out trigger queues one delivery per endpoint), then, in an order that alternates
every round, times ``WebhookDeliverer`` delivering all of them and a plain httpx loop
POSTing the same bodies to the same receivers under the same concurrency budget: as many
threads, and no more connections per receiver than the deliverer's in-flight cap.
Latency: ``fintegrate serve`` creates customers at ``rate`` for ``duration`` s with
``fintegrate webhooks deliver`` running (201 -> receiver, p50/p99), against the same number of
plain httpx POSTs (send -> receiver), the order alternating every round. The verdicts are
the median of the per-round ratios at ``endpoints`` and the p99 of every round. A phase
whose receivers did not get every delivery is invalid.
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import httpx
from sqlalchemy import create_engine

from service.bench import stack, statements
from service.bench.figures import (
    Arrivals,
    Progress,
    Ratio,
    ceiling,
    rate_ratio,
    ratio_over_rounds,
)
from service.bench.receivers import ReceiverProcess
from service.bench.servers import alternating
from service.bench.webhooks_latency import (
    SETTLE_SECONDS,
    SIDES,
    latency_rounds,
)
from service.config import Settings
from service.kit.db import create_db_engine
from service.webhooks import service as webhooks
from service.webhooks.delivery.process import WebhookDeliverer
from service.webhooks.schemas import EndpointCreate

RATIO_TARGET = 0.8  # minimum deliverer/plain at ``endpoints`` endpoints, median of rounds
P99_TARGET_MS = 150.0  # 201 -> receiver, every round
DRAIN_DEADLINE_SECONDS = 600.0


@dataclass(frozen=True)
class WebhookBenchOptions:
    """How to run the benchmark; the defaults are the published method."""

    events: int = 2_000
    customers: int = 200
    endpoints: int = 20
    rounds: int = 3
    rate: float = 200.0
    duration: float = 10.0
    latency: bool = True


@dataclass(frozen=True)
class ThroughputPhase:
    """One side delivered a seeded set once."""

    side: str
    endpoints: int
    expected: int
    delivered: int
    seconds: float
    rate: float  # delivered / seconds

    @property
    def valid(self) -> bool:
        return self.delivered == self.expected


@dataclass
class WebhookBenchReport:
    """Everything the run measured, with the verdicts."""

    options: WebhookBenchOptions
    throughput_rounds: list[dict[str, dict[str, ThroughputPhase]]] = field(default_factory=list)
    latency_rounds: list[dict[str, Arrivals]] = field(default_factory=list)

    def ratios(self) -> list[Ratio]:
        """deliverer/plain per round, at one endpoint (shown) and at ``endpoints`` (target)."""
        found = []
        for key, target in (("one_endpoint", None), ("many_endpoints", RATIO_TARGET)):
            per_round = [
                rate_ratio(r[key]["deliverer"].rate, r[key]["plain"].rate)
                for r in self.throughput_rounds
            ]
            if per_round:
                found.append(ratio_over_rounds(f"plain ({key})", per_round, target))
        return found

    def p99s(self) -> list[float]:
        return [r["deliverer"].p99_ms for r in self.latency_rounds]

    def invalid_phases(self) -> list[str]:
        throughput = [
            f"throughput round {index + 1} {key} {phase.side}"
            for index, sets in enumerate(self.throughput_rounds)
            for key, phases in sets.items()
            for phase in phases.values()
            if not phase.valid
        ]
        latency = [
            f"latency round {index + 1} {phase.side}"
            for index, phases in enumerate(self.latency_rounds)
            for phase in phases.values()
            if not phase.valid
        ]
        return throughput + latency

    @property
    def met(self) -> bool:
        p99s = self.p99s()
        p99_met = not self.options.latency or (bool(p99s) and max(p99s) <= P99_TARGET_MS)
        ratios_met = all(ratio.met for ratio in self.ratios())
        return p99_met and ratios_met and not self.invalid_phases()

    def as_dict(self) -> dict[str, object]:
        p99s = self.p99s()
        return {
            **asdict(self.options),
            "throughput_rounds": [
                {key: {s: asdict(p) for s, p in phases.items()} for key, phases in sets.items()}
                for sets in self.throughput_rounds
            ],
            "throughput_ratios": [ratio.as_dict() for ratio in self.ratios()],
            "latency_rounds": [
                {side: asdict(phase) for side, phase in phases.items()}
                for phases in self.latency_rounds
            ],
            "latency_p99_ms": ceiling(p99s, P99_TARGET_MS),
            "invalid_phases": self.invalid_phases(),
            "met": self.met,
        }


def run_webhook_bench(
    configured: Settings, options: WebhookBenchOptions, progress: Progress = print
) -> WebhookBenchReport:
    """Throughput then latency rounds on a fresh database and vhost (both gone afterwards)."""
    report = WebhookBenchReport(options)
    overrides = {
        **stack.api_overrides(),
        "environment": "development",  # loopback receivers are refused in production
        "webhook_allowed_cidrs": "127.0.0.0/8",
        "webhook_encryption_key": f"bench-{uuid.uuid4().hex}",
    }
    with stack.isolated(configured, overrides) as settings:
        for number, order in enumerate(alternating(len(SIDES), options.rounds), start=1):
            sides = [SIDES[index] for index in order]
            report.throughput_rounds.append(throughput_round(settings, options, sides))
            for key, phases in report.throughput_rounds[-1].items():
                for phase in phases.values():
                    progress(f"throughput round {number}/{options.rounds} {key} {describe(phase)}")
        if options.latency:
            report.latency_rounds = latency_rounds(
                settings, options.rounds, options.rate, options.duration, progress
            )
    return report


def describe(phase: ThroughputPhase) -> str:
    """One line for people."""
    flaw = "" if phase.valid else f"  INVALID ({phase.delivered}/{phase.expected})"
    return f"{phase.side:<10} {phase.rate:8,.0f} deliveries/s  {phase.seconds:6.2f} s{flaw}"


def throughput_round(
    settings: Settings, options: WebhookBenchOptions, sides: list[str]
) -> dict[str, dict[str, ThroughputPhase]]:
    """Both sides at one endpoint and at ``endpoints``; deliveries about ``events`` each."""
    per_endpoint = max(1, options.events // options.endpoints)
    return {
        "one_endpoint": throughput_pair(settings, 1, options.events, options.customers, sides),
        "many_endpoints": throughput_pair(
            settings, options.endpoints, per_endpoint, options.customers, sides
        ),
    }


def throughput_pair(
    settings: Settings, endpoints: int, events: int, customers: int, sides: list[str]
) -> dict[str, ThroughputPhase]:
    """Fresh receivers and a fresh seeded tenant; each side delivers the same set once."""
    receivers = ReceiverProcess(endpoints)
    try:
        bodies = seeded_tenant(settings, receivers.urls, events, customers)
        phases = {}
        for side in sides:
            drive = deliverer_phase if side == "deliverer" else plain_phase
            phases[side] = drive(settings, receivers, bodies)
    finally:
        receivers.stop()
    return {side: phases[side] for side in SIDES}


def seeded_tenant(settings: Settings, urls: list[str], events: int, customers: int) -> list[bytes]:
    """A consumer with one endpoint per receiver and ``events`` events; their bodies."""
    engine = create_engine(settings.database.url)
    with engine.begin() as connection:
        name = f"bench_{uuid.uuid4().hex[:8]}"
        consumer_id = connection.execute(statements.NEW_CONSUMER, {"name": name}).scalar_one()
        for url in urls:
            webhooks.create_endpoint(connection, consumer_id, EndpointCreate(url=url), settings)
        params = {"consumer_id": consumer_id, "count": events, "customers": customers}
        connection.execute(statements.BACKLOG, {**params, "salt": name})
        rows = connection.execute(statements.BODIES, {"consumer_id": consumer_id}).all()
    engine.dispose()
    return [row.payload.encode() for row in rows]


def deliverer_phase(
    settings: Settings, receivers: ReceiverProcess, bodies: list[bytes]
) -> ThroughputPhase:
    """``WebhookDeliverer`` running until the receivers got every delivery (or a deadline).

    It runs as the process does, not ``--once``: a customer's next event is due only once
    the one before it is recorded, which a single pass may miss.
    """
    before = receivers.total()
    expected = len(bodies) * len(receivers.urls)
    engine = create_db_engine(
        settings.database, pool_size=settings.webhooks.delivery_concurrency + 2
    )
    stop = threading.Event()
    deliverer = WebhookDeliverer.from_settings(settings, engine, stop)
    thread = threading.Thread(target=deliverer.run, name="bench-deliverer", daemon=True)
    started = time.monotonic()
    thread.start()
    stack.wait_until(lambda: receivers.total() - before >= expected, DRAIN_DEADLINE_SECONDS)
    seconds = time.monotonic() - started
    stop.set()
    thread.join(SETTLE_SECONDS)
    deliverer.close()
    engine.dispose()
    delivered = receivers.total() - before
    return ThroughputPhase(
        "deliverer", len(receivers.urls), expected, delivered, seconds, delivered / seconds
    )


def plain_phase(
    settings: Settings, receivers: ReceiverProcess, bodies: list[bytes]
) -> ThroughputPhase:
    """Plain httpx: every body to every receiver, under the deliverer's budget: as many
    threads as it has, at most its in-flight cap of connections per receiver."""
    before = receivers.total()
    cap = settings.webhooks.max_in_flight_per_endpoint
    limits = httpx.Limits(max_connections=cap, max_keepalive_connections=cap)
    clients = {url: httpx.Client(limits=limits) for url in receivers.urls}
    jobs = [(clients[url], url, body) for body in bodies for url in receivers.urls]
    headers = {"content-type": "application/json"}
    threads = min(settings.webhooks.delivery_concurrency, cap * len(clients))
    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda job: job[0].post(job[1], content=job[2], headers=headers), jobs))
    seconds = time.monotonic() - started
    for client in clients.values():
        client.close()
    delivered = receivers.total() - before
    return ThroughputPhase(
        "plain", len(clients), len(jobs), delivered, seconds, delivered / seconds
    )
