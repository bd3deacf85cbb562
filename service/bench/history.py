"""``fintegrate bench history``: the platform on an empty outbox beside one with a history.

Two setups side by side, each a fresh database with one tenant and its own API server (one
vhost for both; all dropped at the end). Both get the same partitions and 2,000 recent
failed deliveries; ``loaded`` also gets ``events`` events over ``days`` days. Each round
measures, on each setup in an order that alternates every round (this VM's speed moves
between minutes; alternating puts both setups under the same machine): POST
/customer/data p99, a relay draining a fresh backlog, GET /events first page, the
tenant's redeliver dry-run and ``events stats``. The baseline is the empty setup: a
verdict is the median of the per-round ratios loaded/empty (empty/loaded for a rate),
target at most 1.2x. Then ``fintegrate events archive --older-than days/2`` runs on the
loaded setup as a child process: events/s and its peak RSS. A round with a failed POST or
a backlog the relay did not drain is invalid.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from sqlalchemy import Engine, create_engine

from fintegrate_cli.events import event_stats
from service.bench import history_data, stack
from service.bench.figures import Progress, Ratio, percentile, rate_ratio, ratio_over_rounds
from service.bench.history_archive import ARCHIVE_TARGET, RSS_TARGET_MB, ArchiveFigures, run_archive
from service.bench.servers import (
    alternating,
    api_command,
    free_port,
    fresh_database,
    running_server,
    seed_tenant,
)
from service.config import Settings
from service.kit.db import create_db_engine
from service.messaging.operate.provisioning import provision_consumer_queues
from service.messaging.publish.relay import OutboxRelay

RATIO_TARGET = 1.2  # loaded/empty at most, median of rounds
SETUPS = ("empty", "loaded")
CLIENTS = 8
FIGURES = (
    "post_customer_p99_ms",
    "relay_drain_events_per_s",
    "get_events_first_page_ms",
    "redeliver_dry_run_ms",
    "events_stats_ms",
)


@dataclass(frozen=True)
class HistoryBenchOptions:
    """How to run the benchmark; the defaults are the published method."""

    events: int = 10_000_000
    days: int = 30
    requests: int = 1_500
    rounds: int = 4
    backlog: int = 20_000
    samples: int = 30  # GET /events reads per round; the slower reads take fewer

    @property
    def redeliver_samples(self) -> int:
        return max(1, self.samples // 6)

    @property
    def stats_samples(self) -> int:
        return max(1, self.samples // 10)

    keep_databases: bool = False


@dataclass(frozen=True)
class HistoryPhase:
    """Every figure once on one setup."""

    setup: str
    post_customer_p99_ms: float
    post_failures: int
    relay_drain_events_per_s: float
    backlog: int
    drained: int
    get_events_first_page_ms: float
    redeliver_dry_run_ms: float
    events_stats_ms: float

    @property
    def valid(self) -> bool:
        return self.post_failures == 0 and self.drained == self.backlog


@dataclass
class HistoryBenchReport:
    """Everything the run measured, with the verdicts."""

    options: HistoryBenchOptions
    rounds: list[dict[str, HistoryPhase]] = field(default_factory=list)
    table_bytes_loaded: int = 0
    table_bytes_after_archive: int = 0
    archive: ArchiveFigures | None = None

    def ratios(self) -> list[Ratio]:
        """loaded/empty per round for each figure (a rate: empty/loaded), median of rounds."""
        found = []
        for figure in FIGURES:
            slower, faster = (
                ("empty", "loaded") if figure.endswith("_per_s") else ("loaded", "empty")
            )
            per_round = [
                rate_ratio(getattr(r[slower], figure), getattr(r[faster], figure))
                for r in self.rounds
            ]
            if per_round:
                found.append(ratio_over_rounds(figure, per_round, RATIO_TARGET, at_most=True))
        return found

    def invalid_phases(self) -> list[str]:
        return [
            f"round {index + 1} {phase.setup}"
            for index, phases in enumerate(self.rounds)
            for phase in phases.values()
            if not phase.valid
        ]

    @property
    def met(self) -> bool:
        archive_met = self.archive is not None and self.archive.met
        ratios_met = all(ratio.met for ratio in self.ratios())
        return archive_met and ratios_met and not self.invalid_phases()

    def as_dict(self) -> dict[str, object]:
        archive = None
        if self.archive is not None:
            targets = {"events_per_s": ARCHIVE_TARGET, "peak_rss_mb": RSS_TARGET_MB}
            archive = {**asdict(self.archive), "targets": targets, "met": self.archive.met}
        return {
            **asdict(self.options),
            "rounds": [{s: asdict(p) for s, p in phases.items()} for phases in self.rounds],
            "ratios": [ratio.as_dict() for ratio in self.ratios()],
            "table_bytes_loaded": self.table_bytes_loaded,
            "bytes_per_event": self.table_bytes_loaded / max(self.options.events, 1),
            "archive": archive,
            "table_bytes_after_archive": self.table_bytes_after_archive,
            "invalid_phases": self.invalid_phases(),
            "met": self.met,
        }


@dataclass(frozen=True)
class Setup:
    """One database with one tenant and an API server in front of it."""

    name: str
    settings: Settings
    base: str
    consumer_id: str
    api_key: str
    engine: Engine
    queue: str


def run_history_bench(
    configured: Settings, options: HistoryBenchOptions, progress: Progress = print
) -> HistoryBenchReport:
    """Both setups, the load, the alternating rounds, the archive (everything gone after)."""
    report = HistoryBenchReport(options)
    with ExitStack() as resources:
        amqp_url = resources.enter_context(stack.fresh_vhost(configured))
        setups = [prepare(resources, configured, amqp_url, name, options) for name in SETUPS]
        loaded = setups[1]
        progress(f"loading {options.events:,} events over {options.days} days")
        history_data.bulk_load(
            loaded.engine, loaded.consumer_id, options.events, options.days, progress
        )
        report.table_bytes_loaded = history_data.table_bytes(loaded.engine)
        history_data.settle_write_back(progress)
        for number, order in enumerate(alternating(len(setups), options.rounds), start=1):
            phases = {}
            for setup in (setups[index] for index in order):
                phases[setup.name] = measure(setup, options)
                progress(f"round {number}/{options.rounds} {describe(phases[setup.name])}")
            report.rounds.append({name: phases[name] for name in SETUPS})
        progress("archiving")
        report.archive = run_archive(loaded.settings, options.days // 2)
        report.table_bytes_after_archive = history_data.table_bytes(loaded.engine)
    return report


def prepare(
    resources: ExitStack,
    configured: Settings,
    amqp_url: str,
    name: str,
    options: HistoryBenchOptions,
) -> Setup:
    """A fresh database with a provisioned tenant, its partitions, recent failures, an API."""
    database_url = resources.enter_context(fresh_database(options.keep_databases))
    consumer_id, api_key = seed_tenant(database_url, 4)
    settings = configured.model_copy(
        update={"environment": "test", "database_url": database_url, "rabbitmq_url": amqp_url}
    )
    engine = create_engine(database_url)
    resources.callback(engine.dispose)
    queue = provision_consumer_queues(settings, history_data.consumer_name(engine, consumer_id))
    history_data.prepare(engine, consumer_id, options.days)
    port = free_port()
    resources.enter_context(running_server(api_command(port, 1), port, stack.process_env(settings)))
    base = f"http://127.0.0.1:{port}"
    return Setup(name, settings, base, consumer_id, api_key, engine, queue.queue)


def describe(phase: HistoryPhase) -> str:
    """One line for people."""
    flaw = "" if phase.valid else "  INVALID"
    return (
        f"{phase.setup:<7} POST p99 {phase.post_customer_p99_ms:6.1f} ms"
        f"  drain {phase.relay_drain_events_per_s:7,.0f} events/s"
        f"  GET /events {phase.get_events_first_page_ms:6.1f} ms"
        f"  redeliver {phase.redeliver_dry_run_ms:6.1f} ms"
        f"  stats {phase.events_stats_ms:6.1f} ms{flaw}"
    )


def measure(setup: Setup, options: HistoryBenchOptions) -> HistoryPhase:
    """Every figure once, from the same starting point: statistics fresh, no dead rows."""
    history_data.vacuum_analyze(setup.settings.database_url)
    with httpx.Client(
        base_url=setup.base, headers={"X-API-Key": setup.api_key}, timeout=60
    ) as client:
        first_page = timed(lambda: client.get("/events", params={"limit": 50}), options.samples)
        body = {"period_in_days": 7, "max_try_count": 5, "dry_run": True}  # the CLI default
        redeliver = timed(
            lambda: client.post("/events/redeliver", json=body), options.redeliver_samples
        )
    p99, failures = post_p99(setup.base, setup.api_key, options.requests)
    backlog, drained, drain_rate = drain(setup, options.backlog)
    stats = timed(lambda: event_stats(setup.settings, None), options.stats_samples)
    return HistoryPhase(
        setup.name,
        p99,
        failures,
        drain_rate,
        backlog,
        drained,
        first_page,
        redeliver,
        stats,
    )


def timed(action: Callable[[], Any], repeat: int) -> float:
    """Median milliseconds of ``repeat`` calls."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def post_p99(base: str, api_key: str, requests: int) -> tuple[float, int]:
    """p99 ms of ``requests`` customer creations from 8 concurrent clients; non-201 count."""
    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()

    def client_loop(count: int) -> None:
        nonlocal failures
        with httpx.Client(base_url=base, headers={"X-API-Key": api_key}, timeout=30) as client:
            for n in range(count):
                started = time.perf_counter()
                response = client.post("/customer/data", json={"name": f"p99 {n}"})
                elapsed = (time.perf_counter() - started) * 1000
                with lock:
                    latencies.append(elapsed)
                    failures += response.status_code != 201

    per_client = max(1, requests // CLIENTS)
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client_loop, [per_client] * CLIENTS))
    return percentile(latencies, 0.99), failures


def drain(setup: Setup, count: int) -> tuple[int, int, float]:
    """One relay draining a fresh backlog of ``count`` (and anything else pending, such as
    the tenant's own ``consumer_created``); (pending at the start, published, events/s)."""
    history_data.add_backlog(setup.engine, setup.consumer_id, count)
    backlog = history_data.pending(setup.engine)
    engine = create_db_engine(setup.settings, pool_size=2)
    relay = OutboxRelay(setup.settings, engine, threading.Event())
    started = time.perf_counter()
    drained = relay.drain()
    seconds = time.perf_counter() - started
    relay.close()
    engine.dispose()
    history_data.confirm_delivered(setup.engine)
    stack.purge_queue(setup.settings, setup.queue)  # as the tenant's worker would consume it
    return backlog, drained.published, drained.published / max(seconds, 1e-9)
