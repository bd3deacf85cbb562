"""``fintegrate bench``: measure this machine's platform against plain baselines, same run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
    Ratio,
    run_api_bench,
)

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
        redis_url=settings.redis_url,
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
    verdicts = [verdict(f"api/{ratio.baseline}", ratio) for ratio in report.ratios()]
    tracing = report.tracing_ratio()
    if tracing is not None:
        verdicts.append(verdict(f"{TRACED}/api", tracing))
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


def verdict(figure: str, ratio: Ratio) -> dict[str, object]:
    return {
        "figure": f"{figure} (median of rounds)",
        "value": f"{ratio.median:.2f} (range {ratio.low:.2f}-{ratio.high:.2f})",
        "target": f">= {ratio.target}",
        "met": ratio.met,
    }


def rounded(row: dict[str, object]) -> dict[str, object]:
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}
