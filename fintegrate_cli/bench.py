"""``fintegrate bench``: measure this machine's platform against plain baselines, same run."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Annotated, Protocol, TypeVar

import typer

from fintegrate_cli._bench_tables import ratio_verdict, show_history, show_relay, show_webhooks
from fintegrate_cli._context import state
from fintegrate_cli._errors import EXIT_USAGE, CheckFailed, CliError
from fintegrate_cli._output import JsonOption, emit_rows, info, print_json, wants_json
from service.bench import profiling, wrk
from service.bench.api import (
    P99_TARGET_MS,
    TARGETS,
    TRACED,
    ApiBenchOptions,
    ApiBenchReport,
    run_api_bench,
)
from service.bench.history import HistoryBenchOptions, run_history_bench
from service.bench.relay import RelayBenchOptions, run_relay_bench
from service.bench.relay_fairness import FairnessOptions
from service.bench.relay_latency import LatencyOptions
from service.bench.stack import cleaned_up_on_sigterm
from service.bench.webhooks import WebhookBenchOptions, run_webhook_bench

app = typer.Typer(
    help="Benchmarks against a baseline measured in the same run (sizing your deployment).",
    no_args_is_help=True,
)


@app.command("api")
def bench_api(
    ctx: typer.Context,
    rounds: Annotated[int, typer.Option(min=1, max=20, help="Rounds, order alternating.")] = 5,
    duration: Annotated[
        float, typer.Option(min=1, max=60, help="Measured seconds per phase.")
    ] = 5.0,
    warmup: Annotated[
        float, typer.Option(min=0, max=10, help="Unmeasured seconds before each phase.")
    ] = 1.0,
    connections: Annotated[int, typer.Option(min=1, max=256, help="Keep-alive connections.")] = 16,
    workers: Annotated[int, typer.Option(min=1, max=8, help="Server processes each.")] = 1,
    generator: Annotated[
        str, typer.Option(help="wrk (apt-get install wrk) or builtin; auto: wrk when installed.")
    ] = "auto",
    baselines: Annotated[
        str, typer.Option(help="Comma-separated: sqlalchemy, asyncpg.")
    ] = "sqlalchemy,asyncpg",
    bcrypt_rounds: Annotated[
        int, typer.Option(min=4, max=16, help="Cost of the seeded key (only its first use).")
    ] = 12,
    tracing: Annotated[
        bool,
        typer.Option(
            "--tracing",
            help="Add an api+tracing phase (every request traced to a discarding OTLP receiver).",
        ),
    ] = False,
    profile: Annotated[
        Path | None,
        typer.Option(
            help="One more API phase under py-spy (the traced API with --tracing); "
            "collapsed stacks to this file."
        ),
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Exit 3 when a target is not met or a phase is invalid.")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """POST /customer/data: the API vs plain FastAPI on SQLAlchemy and on asyncpg.

    Fresh databases on the configured PostgreSQL server (FINTEGRATE_BENCH_PG_URL names
    another), the configured Redis for the API's rate limit, servers on loopback. Verdicts:
    median of the per-round ratios (>= 1.3x SQLAlchemy, >= 0.85x asyncpg) and the API's
    p99 <= 30 ms in every round. With --tracing, api+tracing/api >= 0.90 (median of rounds).
    """
    settings = state(ctx).settings()
    options = ApiBenchOptions(
        connections=connections,
        duration=duration,
        warmup=warmup,
        rounds=rounds,
        workers=workers,
        generator=pick_generator(generator),
        baselines=parse_baselines(baselines),
        bcrypt_rounds=bcrypt_rounds,
        redis_url=settings.redis.url,
        tracing=tracing,
    )
    if profile is not None and not profiling.available():
        raise CliError("--profile needs py-spy (.venv/bin/pip install py-spy)", EXIT_USAGE)
    quiet = state(ctx).quiet
    info(
        f"bench api: {options.rounds} round(s) of {options.warmup:g} s + {options.duration:g} s, "
        f"{options.connections} connections, generator {options.generator}",
        quiet,
    )
    with cleaned_up_on_sigterm():
        report = run_api_bench(options, lambda line: info(line, quiet), profile)
    show(report, wants_json(ctx, json_output))
    if check and not report.met:
        raise CheckFailed("bench api: a target was not met or a phase was invalid (see above)")


def pick_generator(choice: str) -> str:
    if choice == "auto":
        return "wrk" if wrk.available() else "builtin"
    if choice not in ("wrk", "builtin"):
        raise CliError("--generator: one of auto, wrk, builtin", EXIT_USAGE)
    if choice == "wrk" and not wrk.available():
        raise CliError("--generator wrk: wrk is not on PATH (apt-get install wrk)", EXIT_USAGE)
    return choice


def parse_baselines(value: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    if not names or set(names) - set(TARGETS):
        raise CliError(f"--baselines: one or more of {', '.join(TARGETS)}", EXIT_USAGE)
    return names


def show(report: ApiBenchReport, as_json: bool) -> None:
    """The per-round phases and the verdicts, as tables or one JSON document."""
    if as_json:
        print_json(report.as_dict())
        return
    rows = [
        {"round": number, **vars(phase)}
        for number, phases in enumerate(report.rounds, start=1)
        for phase in phases.values()
    ]
    columns = ["round", "server", "rate", "p50_ms", "p99_ms", "non_2xx"]
    emit_rows([rounded(row) for row in rows], [*columns, "server_cpu_ms_per_request"], False)
    verdicts = [ratio_verdict(f"api/{ratio.baseline}", ratio) for ratio in report.ratios()]
    tracing = report.tracing_ratio()
    cpu = report.tracing_cpu_ratio()
    if tracing is not None and cpu is not None:
        verdicts.append(ratio_verdict(f"{TRACED}/api", tracing))
        verdicts.append(ratio_verdict(f"{TRACED}/api server CPU per request", cpu))
    p99s = report.api_p99s()
    verdicts.append(
        {
            "figure": "api p99 ms (every round)",
            "value": f"{min(p99s):.1f}-{max(p99s):.1f}",
            "target": f"<= {P99_TARGET_MS:g}",
            "met": max(p99s) <= P99_TARGET_MS,
        }
    )
    emit_rows(verdicts, ["figure", "value", "target", "met"], False, title="verdicts")
    if report.invalid_phases():
        info(f"invalid phases (non-2xx or rate limit skipped): {report.invalid_phases()}")


def rounded(row: dict[str, object]) -> dict[str, object]:
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}


R = TypeVar("R", bound="BenchReport")
CheckOption = Annotated[
    bool, typer.Option("--check", help="Exit 3 when a target is not met or a phase is invalid.")
]
RoundsOption = Annotated[int, typer.Option(min=1, max=20, help="Rounds, order alternating.")]


class BenchReport(Protocol):
    """What every benchmark's report offers the CLI."""

    @property
    def met(self) -> bool: ...

    def as_dict(self) -> dict[str, object]: ...


def measure(
    ctx: typer.Context,
    name: str,
    intro: str,
    run: Callable[[Callable[[str], None]], R],
    show: Callable[[R], None],
    json_output: bool,
    check: bool,
) -> None:
    """Say what is measured, ``run`` it (progress on stderr, cleaned up on SIGTERM), then
    ``finish``."""
    quiet = state(ctx).quiet
    info(intro, quiet)
    with cleaned_up_on_sigterm():
        report = run(lambda line: info(line, quiet))
    finish(name, report, show, wants_json(ctx, json_output), check)


def finish(name: str, report: R, show: Callable[[R], None], as_json: bool, check: bool) -> None:
    """The report as one JSON document or as tables; exit 3 under ``--check`` when missed."""
    if as_json:
        print_json(report.as_dict())
    else:
        show(report)
    if check and not report.met:
        raise CheckFailed(f"bench {name}: a target was not met or a phase was invalid (see above)")


@app.command("relay")
def bench_relay(
    ctx: typer.Context,
    events: Annotated[
        int, typer.Option(min=1, help="Backlog each drain phase publishes.")
    ] = 50_000,
    customers: Annotated[
        int, typer.Option(min=1, help="Customers the backlog spreads over.")
    ] = 1_000,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Relay batch (default FINTEGRATE_RELAY_BATCH_SIZE).")
    ] = None,
    rounds: RoundsOption = 3,
    rate: Annotated[float, typer.Option(min=1, help="Customers/s of the latency run.")] = 200.0,
    duration: Annotated[
        float, typer.Option(min=1, help="Measured seconds of the latency run.")
    ] = 30.0,
    api_workers: Annotated[
        int, typer.Option(min=1, max=8, help="API processes of the latency run.")
    ] = 2,
    slow_customer_seconds: Annotated[
        float,
        typer.Option(
            min=0,
            max=60,
            help="Latency run beside one customer whose 30 queued events take this long each "
            "in the handler (target for the others: p99 <= 2000 ms).",
        ),
    ] = 0.0,
    skip_drain: Annotated[bool, typer.Option("--skip-drain", help="No drain rounds.")] = False,
    skip_latency: Annotated[bool, typer.Option("--skip-latency", help="No latency run.")] = False,
    fairness: Annotated[
        bool,
        typer.Option("--fairness", help="Only the fairness rounds (a loud and a quiet tenant)."),
    ] = False,
    fairness_events: Annotated[
        int, typer.Option(min=1, help="The loud tenant's backlog.")
    ] = 15_000,
    quiet_rate: Annotated[float, typer.Option(min=0.1, help="The quiet tenant's events/s.")] = 20.0,
    profile: Annotated[
        Path | None,
        typer.Option(help="One more ordered drain under cProfile; pstats to this file."),
    ] = None,
    check: CheckOption = False,
    json_output: JsonOption = False,
) -> None:
    """Relay drain vs raw pika and the unordered relay; 201 -> handler; --fairness.

    Drain: every round each side publishes the same backlog (raw pika with a confirm per
    message, the relay's earlier unordered algorithm, the ordered relay), the order
    alternating; verdicts are medians of per-round ratios (ordered >= 0.9x unordered,
    >= 3.5x raw pika). Latency: serve, relay and consume as processes, customers at --rate,
    against plain pika publish -> consume at the same rate, alternating; p50 <= 20 ms and
    p99 <= 100 ms every round, with the outbox lag beside them. --fairness: a quiet
    tenant's commit -> publish p99 (<= 1 s) while a loud backlog drains, and the drain rate
    vs the earlier oldest-first selection (>= 0.9x). A fresh database and vhost on the
    configured PostgreSQL (FINTEGRATE_BENCH_PG_URL names another) and RabbitMQ (its
    management API creates the vhost), both dropped at the end.
    Exit codes: 0 measured, 1 the stack failed, 2 usage, 3 --check and a target missed.
    """
    settings = state(ctx).settings()
    size = batch_size or settings.relay.batch_size
    options = RelayBenchOptions(
        events=events,
        customers=customers,
        batch_size=size,
        rounds=rounds,
        drain=not skip_drain and not fairness,
        latency=None
        if skip_latency or fairness
        else LatencyOptions(
            rate=rate,
            duration=duration,
            api_workers=api_workers,
            rounds=rounds,
            slow_customer_seconds=slow_customer_seconds,
        ),
        fairness=FairnessOptions(fairness_events, customers, quiet_rate, size, rounds)
        if fairness
        else None,
        profile=profile,
    )
    intro = f"bench relay: {rounds} round(s), backlog {events:,} over {customers:,}, batch {size}"
    run = partial(run_relay_bench, settings, options)
    measure(ctx, "relay", intro, run, show_relay, json_output, check)


@app.command("history")
def bench_history(
    ctx: typer.Context,
    events: Annotated[
        int, typer.Option(min=1, help="History loaded into the loaded setup.")
    ] = 10_000_000,
    days: Annotated[int, typer.Option(min=2, max=366, help="Days the history spans.")] = 30,
    requests: Annotated[int, typer.Option(min=8, help="POSTs of each p99 measure.")] = 1_500,
    rounds: RoundsOption = 4,
    backlog: Annotated[
        int, typer.Option(min=1, help="Events each relay drain publishes.")
    ] = 20_000,
    samples: Annotated[
        int, typer.Option(min=1, help="Reads of GET /events per round (redeliver 1/6, stats 1/10).")
    ] = 30,
    keep_databases: Annotated[
        bool, typer.Option("--keep-databases", help="Leave both databases to inspect them.")
    ] = False,
    check: CheckOption = False,
    json_output: JsonOption = False,
) -> None:
    """The API, relay and operator reads on an empty outbox vs one with a long history.

    Two fresh databases on the configured PostgreSQL (FINTEGRATE_BENCH_PG_URL names
    another), each with a tenant and an API server, one fresh vhost; the loaded one gets
    --events over --days. Each round measures POST /customer/data p99, a relay drain, GET
    /events, the redeliver dry-run and `events stats` on both, the order alternating; a
    verdict is the median of the per-round ratios loaded/empty (<= 1.2x). Then `events
    archive --older-than days/2` on the loaded one (>= 50,000 events/s, peak RSS <= 200 MB).
    Loading ten million events takes minutes and gigabytes of disk.
    Exit codes: 0 measured, 1 the stack failed, 2 usage, 3 --check and a target missed.
    """
    settings = state(ctx).settings()
    options = HistoryBenchOptions(
        events=events,
        days=days,
        requests=requests,
        rounds=rounds,
        backlog=backlog,
        samples=samples,
        keep_databases=keep_databases,
    )
    intro = f"bench history: {rounds} round(s), {events:,} events over {days} days"
    run = partial(run_history_bench, settings, options)
    measure(ctx, "history", intro, run, show_history, json_output, check)


@app.command("webhooks")
def bench_webhooks(
    ctx: typer.Context,
    events: Annotated[
        int, typer.Option(min=1, help="Deliveries of each throughput phase.")
    ] = 2_000,
    customers: Annotated[int, typer.Option(min=1, help="Customers the events spread over.")] = 200,
    endpoints: Annotated[
        int, typer.Option(min=2, max=200, help="Receivers of the fan-out set.")
    ] = 20,
    rounds: RoundsOption = 3,
    rate: Annotated[float, typer.Option(min=1, help="Customers/s of the latency phases.")] = 200.0,
    duration: Annotated[float, typer.Option(min=1, help="Seconds of each latency phase.")] = 10.0,
    skip_latency: Annotated[
        bool, typer.Option("--skip-latency", help="No latency rounds.")
    ] = False,
    check: CheckOption = False,
    json_output: JsonOption = False,
) -> None:
    """`webhooks deliver` vs a plain httpx loop: deliveries/s and 201 -> receiver.

    Throughput at 1 and at --endpoints loopback receivers (a process of their own), each
    round on freshly seeded deliveries, the deliverer and plain httpx (the same bodies, as
    many threads, at most the in-flight cap of connections per receiver) in an order that
    alternates; the verdict is the median of the per-round ratios at --endpoints (>= 0.8x).
    Latency: customers at --rate through `fintegrate serve` to a receiver with `fintegrate
    webhooks deliver` running vs plain httpx POSTs, alternating; p99 <= 150 ms in every
    round. A fresh
    database and vhost on the configured servers, dropped at the end.
    Exit codes: 0 measured, 1 the stack failed, 2 usage, 3 --check and a target missed.
    """
    settings = state(ctx).settings()
    options = WebhookBenchOptions(
        events=events,
        customers=customers,
        endpoints=endpoints,
        rounds=rounds,
        rate=rate,
        duration=duration,
        latency=not skip_latency,
    )
    intro = f"bench webhooks: {rounds} round(s), {events:,} deliveries, 1 and {endpoints} endpoints"
    run = partial(run_webhook_bench, settings, options)
    measure(ctx, "webhooks", intro, run, show_webhooks, json_output, check)
