"""End to end: the API's 201 to the tenant's handler, with every part of the stack running.

``fintegrate serve``, ``fintegrate relay`` and ``fintegrate consume`` run as child
processes on the bench's own database and vhost; customers are created open-loop at a
steady ``rate`` (a request waiting for a free connection counts from its scheduled
moment), after an unmeasured warm-up. Reported: 201 -> handler called (p50/p99/max), the
same from the moment the request was due, and the outbox lag (commit -> confirmed
publish) of the same events, which is the relay's share of it.
"""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine

from service.bench import loadgen, stack, statements
from service.bench.figures import Progress, percentile
from service.bench.servers import BIN, api_command, free_port, wait_healthy
from service.config import Settings

P50_TARGET_MS = 20.0
P99_TARGET_MS = 100.0
HANDLER_LOG_ENV = "FINTEGRATE_BENCH_HANDLER_LOG"
HANDLER = "service.bench.relay_latency:record_handler"
WARMUP_SECONDS = 2.0
SETTLE_SECONDS = 60.0


@dataclass(frozen=True)
class LatencyOptions:
    """The steady load: ``rate`` customers/s for ``duration`` s, ``api_workers`` servers."""

    rate: float = 200.0
    duration: float = 30.0
    api_workers: int = 2
    warmup: float = WARMUP_SECONDS


@dataclass(frozen=True)
class LatencyFigures:
    """API 201 -> handler called of every measured customer, and its parts."""

    rate: float
    duration: float
    requests: int
    answered_201: int
    handled: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    due_p50_ms: float  # from the moment the request was due, the API's own time included
    due_p99_ms: float
    publish_lag_p50_ms: float  # commit -> confirmed publish of the same events
    publish_lag_p99_ms: float

    @property
    def valid(self) -> bool:
        """Every request answered 201 and every answered customer reached the handler."""
        return self.requests == self.answered_201 == self.handled

    @property
    def met(self) -> bool:
        return self.p50_ms <= P50_TARGET_MS and self.p99_ms <= P99_TARGET_MS

    def as_dict(self) -> dict[str, object]:
        targets = {"p50_ms": P50_TARGET_MS, "p99_ms": P99_TARGET_MS}
        return {**asdict(self), "targets": targets, "valid": self.valid, "met": self.met}


_handler_log: Any = None


def record_handler(message: Any) -> None:
    """The consume process's handler: appends ``customer_id wall-clock-seconds``."""
    global _handler_log
    if _handler_log is None:
        _handler_log = open(os.environ[HANDLER_LOG_ENV], "a", buffering=1)  # noqa: SIM115
    _handler_log.write(f"{message.customer_id} {time.time():.6f}\n")


def run(settings: Settings, options: LatencyOptions, progress: Progress) -> LatencyFigures:
    """The three processes on loopback, the steady load, the figures (processes gone)."""
    with tempfile.TemporaryDirectory(prefix="bench_relay_") as directory:
        log = Path(directory) / "handled.log"
        with ExitStack() as processes:
            api_key, settings = start_pipeline(processes, settings, options, log)
            url = settings.api_url
            loadgen.steady_load(url, api_key, options.rate, options.warmup)  # not measured
            time.sleep(options.warmup)
            warm = set(handler_times(log))
            answered = loadgen.steady_load(url, api_key, options.rate, options.duration)
            deadline = time.monotonic() + SETTLE_SECONDS
            while time.monotonic() < deadline and not set(answered) <= set(handler_times(log)):
                time.sleep(0.2)
        figures = latency_figures(settings, options, answered, warm, handler_times(log))
    progress(
        f"latency at {options.rate:g}/s: {figures.handled}/{figures.requests} handled, "
        f"p50 {figures.p50_ms:.1f} ms, p99 {figures.p99_ms:.1f} ms"
    )
    return figures


def start_pipeline(
    processes: ExitStack, settings: Settings, options: LatencyOptions, log: Path
) -> tuple[str, Settings]:
    """serve, a tenant made through the API, relay, consume; the tenant's key and settings."""
    port = free_port()
    settings = settings.model_copy(update={"api_url": f"http://127.0.0.1:{port}"})
    command = api_command(port, options.api_workers)
    wait_healthy(port, stack.background(processes, command, stack.process_env(settings)))
    tenant = stack.tenant_through_api(settings.api_url, settings)
    cli = str(BIN / "fintegrate")
    stack.background(processes, [cli, "-q", "relay"], stack.process_env(settings))
    worker_env = stack.process_env(
        settings, FINTEGRATE_API_KEY=tenant["api_key"], **{HANDLER_LOG_ENV: str(log)}
    )
    consume = [cli, "-q", "consume", "--consumer", tenant["name"], "--handler", HANDLER]
    stack.background(processes, consume, worker_env)
    return str(tenant["api_key"]), settings


def latency_figures(
    settings: Settings,
    options: LatencyOptions,
    answered: dict[str, tuple[float, float]],
    warm: set[str],
    called: dict[str, float],
) -> LatencyFigures:
    """The figures of the customers created in the measured window."""
    measured = {c: times for c, times in answered.items() if c in called and c not in warm}
    from_201 = [(called[c] - at) * 1000 for c, (_, at) in measured.items()]
    from_due = [(called[c] - due) * 1000 for c, (due, _) in measured.items()]
    lag_p50, lag_p99 = publish_lag(settings, list(measured))
    return LatencyFigures(
        options.rate,
        options.duration,
        int(options.rate * options.duration),
        len(answered),
        len(measured),
        percentile(from_201, 0.50),
        percentile(from_201, 0.99),
        max(from_201, default=0.0),
        percentile(from_due, 0.50),
        percentile(from_due, 0.99),
        lag_p50,
        lag_p99,
    )


def publish_lag(settings: Settings, customer_ids: list[str]) -> tuple[float, float]:
    """p50/p99 of commit -> confirmed publish of these customers' events, ms."""
    engine = create_engine(settings.database_url)
    with engine.connect() as connection:
        row = connection.execute(
            statements.PUBLISH_LAG_OF_CUSTOMERS, {"customer_ids": customer_ids}
        ).one()
    engine.dispose()
    return float(row.p50 or 0), float(row.p99 or 0)


def handler_times(path: Path) -> dict[str, float]:
    """customer_id -> when the handler was called, as the consume process logged it."""
    if not path.exists():
        return {}
    pairs = (line.split() for line in path.read_text().splitlines() if line.strip())
    return {customer: float(stamp) for customer, stamp in pairs}
