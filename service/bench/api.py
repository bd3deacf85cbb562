"""``fintegrate bench api``: POST /customer/data, the real API against two plain baselines.

The baselines (``service.bench.baseline_app``) do the same two inserts in one transaction
with no auth, rate limit, middleware or envelope: ``sqlalchemy`` (a ``def`` endpoint on a
SQLAlchemy engine) and ``asyncpg`` (an ``async def`` endpoint on an asyncpg pool). Each
server gets a fresh migrated database and the same number of workers. Every round drives
each server in turn for ``warmup`` + ``duration`` seconds with ``connections`` keep-alive
connections (wrk ``-t2`` when installed, else the built-in generator), the order reversed
every other round so neither side always runs first on a warmer machine. The verdicts use
the median of the per-round ratios api/baseline (its range printed beside it) and the
API's p99 of every round. A phase with a non-2xx answer or a rate-limit check that
skipped Redis makes the run invalid: its figures would flatter the API.

With ``tracing`` a second API, ``api+tracing``, runs beside the first on its own database,
tracing every request (``OTEL_TRACES_SAMPLER=always_on``) to an OTLP/HTTP receiver on
loopback that accepts and discards (``service.bench.receiver``); its verdict is the median
of the per-round ratios api+tracing/api (at least 0.90: tracing costs at most 10 %). A
tracing phase whose spans never reached the receiver is invalid.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from service.bench import loadgen, profiling, wrk
from service.bench.figures import Progress, Ratio, ceiling, rate_ratio, ratio_over_rounds
from service.bench.receiver import Receiver
from service.bench.servers import (
    alternating,
    api_command,
    baseline_command,
    free_port,
    fresh_database,
    running_server,
    seed_tenant,
)

BASELINE_FACTORIES = {"sqlalchemy": "create_app", "asyncpg": "create_async_app"}
TARGETS = {"sqlalchemy": 1.3, "asyncpg": 0.85}  # minimum api/baseline, median of rounds
TRACED = "api+tracing"
TRACING_TARGET = 0.90  # minimum api+tracing/api, median of rounds
P99_TARGET_MS = 30.0  # the API's p99 in every round
WRK_THREADS = 2
FAIL_OPEN_SERIES = 'fintegrate_ratelimit_fail_open_total{check="rate_limit"}'


@dataclass(frozen=True)
class ApiBenchOptions:
    """How to run the benchmark; the defaults are the published method."""

    connections: int = 16
    duration: float = 5.0
    warmup: float = 1.0
    rounds: int = 5
    workers: int = 1
    generator: str = "wrk"  # or "builtin"
    baselines: tuple[str, ...] = ("sqlalchemy", "asyncpg")
    bcrypt_rounds: int = 12
    redis_url: str | None = None
    api_env: dict[str, str] = field(default_factory=dict)
    keep_databases: bool = False
    tracing: bool = False


@dataclass(frozen=True)
class Phase:
    """One server driven once: its rate, latencies and what it cost."""

    server: str
    rate: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    server_cpu_ms_per_request: float
    rate_limit_fail_open: int | None = None


@dataclass
class ApiBenchReport:
    """Everything the run measured, with the verdicts."""

    generator: str
    connections: int
    duration: float
    workers: int
    rounds: list[dict[str, Phase]] = field(default_factory=list)
    otlp_exports: int | None = None  # export requests the receiver got (tracing runs)

    def ratios(self) -> list[Ratio]:
        names = [name for name in self.rounds[0] if name in TARGETS] if self.rounds else []
        return [
            ratio_over_rounds(name, self.per_round("api", name), TARGETS[name]) for name in names
        ]

    def tracing_ratio(self) -> Ratio | None:
        """api+tracing/api over the rounds (``baseline`` is the untraced API); None if not run."""
        if not self.rounds or TRACED not in self.rounds[0]:
            return None
        return ratio_over_rounds("api", self.per_round(TRACED, "api"), TRACING_TARGET)

    def tracing_cpu_ratio(self) -> Ratio | None:
        """Server CPU per request, api+tracing/api, for information (no target): on a
        machine whose other load sets the pace, req/s can hide what tracing costs."""
        if self.tracing_ratio() is None:
            return None
        per_round = [
            rate_ratio(r[TRACED].server_cpu_ms_per_request, r["api"].server_cpu_ms_per_request)
            for r in self.rounds
        ]
        return ratio_over_rounds("api", per_round, None)

    def per_round(self, figure: str, baseline: str) -> list[float]:
        return [rate_ratio(r[figure].rate, r[baseline].rate) for r in self.rounds]

    def api_p99s(self) -> list[float]:
        return [r["api"].p99_ms for r in self.rounds]

    def invalid_phases(self) -> list[str]:
        """Phases whose figures cannot be trusted (errors, the rate limit skipped, or traced
        requests whose spans never reached the receiver)."""
        invalid = [
            f"round {index + 1} {phase.server}"
            for index, phases in enumerate(self.rounds)
            for phase in phases.values()
            if phase.non_2xx or phase.rate_limit_fail_open
        ]
        if self.tracing_ratio() is not None and not self.otlp_exports:
            invalid.append(f"{TRACED}: no span reached the OTLP receiver")
        return invalid

    @property
    def met(self) -> bool:
        p99_met = bool(self.rounds) and max(self.api_p99s()) <= P99_TARGET_MS
        tracing = self.tracing_ratio()
        ratios = [*self.ratios(), *([tracing] if tracing else [])]
        return p99_met and all(ratio.met for ratio in ratios) and not self.invalid_phases()

    def as_dict(self) -> dict[str, object]:
        p99s = self.api_p99s()
        return {
            "request": "POST /customer/data",
            "generator": self.generator,
            "connections": self.connections,
            "duration_seconds": self.duration,
            "workers": self.workers,
            "rounds": [{name: asdict(p) for name, p in phases.items()} for phases in self.rounds],
            "ratios": [r.as_dict() for r in self.ratios()],
            "tracing": self.tracing_as_dict(),
            "api_p99_ms": ceiling(p99s, P99_TARGET_MS),
            "invalid_phases": self.invalid_phases(),
            "met": self.met,
        }

    def tracing_as_dict(self) -> dict[str, object] | None:
        ratio = self.tracing_ratio()
        if ratio is None:
            return None
        cpu = self.tracing_cpu_ratio()
        return {
            "ratio": f"{TRACED}/api",
            **ratio.as_dict(),
            "otlp_exports": self.otlp_exports,
            "server_cpu_per_request": cpu.as_dict() if cpu else None,
        }


@dataclass(frozen=True)
class Server:
    """A running server under test."""

    name: str
    port: int
    pid: int
    headers: dict[str, str]


def run_api_bench(
    options: ApiBenchOptions, progress: Progress = print, profile: Path | None = None
) -> ApiBenchReport:
    """Start the servers, run the rounds, return the report (servers and databases gone).

    ``profile`` records the last server: the traced API with ``options.tracing``."""
    report = ApiBenchReport(
        options.generator, options.connections, options.duration, options.workers
    )
    with ExitStack() as sinks:
        sink = Receiver() if options.tracing else None
        if sink is not None:
            sinks.callback(sink.stop)
        with ExitStack() as stack:
            servers = start_servers(options, stack, sink)
            run_rounds(servers, options, report, progress)
            if profile is not None:
                profile_phase(servers[-1], options, profile, progress)
        # The servers are gone: the traced API exported what it still held as it stopped.
        report.otlp_exports = sink.count if sink else None
    return report


def run_rounds(
    servers: list[Server], options: ApiBenchOptions, report: ApiBenchReport, progress: Progress
) -> None:
    for number, order in enumerate(alternating(len(servers), options.rounds), start=1):
        phases = {}
        for index in order:
            phase = measure(servers[index], options)
            phases[phase.server] = phase
            progress(f"round {number}/{options.rounds} {describe(phase)}")
        report.rounds.append({name: phases[name] for name in (s.name for s in servers)})


def profile_phase(
    server: Server, options: ApiBenchOptions, profile: Path, progress: Progress
) -> None:
    with profiling.recording(server.pid, profile, options.warmup + options.duration):
        progress(f"profiled {describe(measure(server, options))}")
    for line in profiling.summary(profile):
        progress(line)


def start_servers(
    options: ApiBenchOptions, stack: ExitStack, sink: Receiver | None = None
) -> list[Server]:
    """Fresh databases, a seeded tenant in each, the baselines then the API on loopback
    (then the traced API, exporting to ``sink``, when there is one)."""
    servers = []
    for name in [*options.baselines, "api", *([TRACED] if sink else [])]:
        database = stack.enter_context(fresh_database(options.keep_databases))
        consumer_id, api_key = seed_tenant(database, options.bcrypt_rounds)
        port = free_port()
        if name in ("api", TRACED):
            env = {
                "FINTEGRATE_DATABASE_URL": database,
                "FINTEGRATE_REDIS_URL": options.redis_url or "",
                **options.api_env,
                **(tracing_env(otlp_endpoint(sink) if name == TRACED else None) if sink else {}),
            }
            command, headers = api_command(port, options.workers), {"X-API-Key": api_key}
        else:
            env = {"FINTEGRATE_DATABASE_URL": database, "BENCH_CONSUMER_ID": consumer_id}
            command = baseline_command(BASELINE_FACTORIES[name], port, options.workers)
            headers = {}
        pid = stack.enter_context(running_server(command, port, env))
        servers.append(Server(name, port, pid, headers))
    return servers


def otlp_endpoint(receiver: Receiver) -> str:
    """The receiver as ``OTEL_EXPORTER_OTLP_ENDPOINT`` (it answers ``/v1/traces`` with 204,
    a success to the exporter, and counts the posts)."""
    return f"http://127.0.0.1:{receiver.server.server_address[1]}"


def tracing_env(endpoint: str | None) -> dict[str, str]:
    """Every request traced and exported over OTLP/HTTP to ``endpoint`` (batching: our
    defaults); tracing off for None, whatever this process's own OTEL_* variables say."""
    if endpoint is None:
        return {"OTEL_TRACES_EXPORTER": "none"}
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_SDK_DISABLED": "false",
        "OTEL_TRACES_SAMPLER": "always_on",
    }


def measure(server: Server, options: ApiBenchOptions) -> Phase:
    """One phase: warm-up unmeasured, then the measured window, with the server's CPU."""
    fail_open_before = fail_open_total(server)
    if options.generator == "wrk":
        rate, p50, p99, non_2xx, cpu = drive_wrk(server, options)
    else:
        rate, p50, p99, non_2xx, cpu = drive_builtin(server, options)
    fail_open_after = fail_open_total(server)
    fail_open = (
        None
        if fail_open_before is None or fail_open_after is None
        else fail_open_after - fail_open_before
    )
    return Phase(
        server.name, rate, p50 * 1000, p99 * 1000, non_2xx, cpu / max(rate, 1e-9) * 1000, fail_open
    )


def drive_builtin(
    server: Server, options: ApiBenchOptions
) -> tuple[float, float, float, int, float]:
    extra = "".join(f"{name}: {value}\r\n" for name, value in server.headers.items())
    target = loadgen.Target(server.name, server.port, loadgen.request_head(server.port, extra))
    before = loadgen.process_tree_cpu(server.pid)
    result = loadgen.run_loop(
        loadgen.drive(target, options.connections, options.warmup, options.duration)
    )
    cpu = (loadgen.process_tree_cpu(server.pid) - before) / (options.warmup + options.duration)
    non_2xx = sum(n for code, n in result.statuses.items() if not 200 <= code < 300)
    return result.rate, result.percentile(0.5), result.percentile(0.99), non_2xx, cpu


def drive_wrk(server: Server, options: ApiBenchOptions) -> tuple[float, float, float, int, float]:
    def run(seconds: float) -> wrk.WrkResult:
        return wrk.run(
            server.name,
            server.port,
            server.headers,
            threads=WRK_THREADS,
            connections=options.connections,
            seconds=seconds,
        )

    if options.warmup >= 1:
        run(options.warmup)
    before = loadgen.process_tree_cpu(server.pid)
    started = time.monotonic()
    result = run(options.duration)
    cpu = (loadgen.process_tree_cpu(server.pid) - before) / (time.monotonic() - started)
    return result.rate, result.p50, result.p99, result.non_2xx, cpu


def fail_open_total(server: Server) -> int | None:
    """The API's rate-limit checks that skipped Redis so far; None for a baseline."""
    if server.name not in ("api", TRACED):
        return None
    response = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5)
    lines = response.text.splitlines() if response.status_code == 200 else []
    counts = [line.rsplit(" ", 1)[1] for line in lines if line.startswith(FAIL_OPEN_SERIES)]
    return int(sum(float(count) for count in counts))


def describe(phase: Phase) -> str:
    """One line for people."""
    return (
        f"{phase.server:<10} {phase.rate:8.0f} req/s  p50 {phase.p50_ms:6.1f} ms"
        f"  p99 {phase.p99_ms:6.1f} ms  non-2xx {phase.non_2xx}"
        f"  server {phase.server_cpu_ms_per_request:.2f} ms cpu/req"
        + (
            ""
            if phase.rate_limit_fail_open is None
            else f"  fail-open {phase.rate_limit_fail_open}"
        )
    )


def fail_open_note(count: int | None) -> str:
    return "" if count is None else f"  fail-open {count}"
