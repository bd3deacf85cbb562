"""``fintegrate bench api``: a small real run, and the report's arithmetic and honesty.

Timings are never asserted: the machine may be busy. What is asserted is that every
figure the report prints follows from the phases it measured.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import time
from typing import Any

import pytest

from service.bench.api import (
    P99_TARGET_MS,
    TARGETS,
    TRACED,
    TRACING_TARGET,
    ApiBenchReport,
    Phase,
)
from service.bench.servers import alternating
from service.bench.stack import cleaned_up_on_sigterm
from service.config import Settings
from tests.support.cli import RunCli
from tests.support.services import PG_ADMIN_URL


def phase(server: str, rate: float, p99_ms: float = 10.0, **extra: int) -> Phase:
    return Phase(server, rate, p99_ms / 2, p99_ms, extra.get("non_2xx", 0), 1.0,
                 extra.get("fail_open", 0 if server == "api" else None))  # fmt: skip


def small_run(run_cli: RunCli, monkeypatch: pytest.MonkeyPatch, *options: str) -> Any:
    """``bench api --json`` for two short rounds on two connections: its report."""
    monkeypatch.setenv("FINTEGRATE_BENCH_PG_URL", PG_ADMIN_URL)
    result = run_cli(
        "--json", "bench", "api", "--rounds", "2", "--duration", "1", "--warmup", "0",
        "--connections", "2", "--generator", "builtin", "--bcrypt-rounds", "4", *options,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_a_small_run_reports_every_phase_with_its_baselines(
    run_cli: RunCli, service_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = small_run(run_cli, monkeypatch)
    assert report["generator"] == "builtin" and report["connections"] == 2
    assert len(report["rounds"]) == 2
    for phases in report["rounds"]:
        assert set(phases) == {"sqlalchemy", "asyncpg", "api"}
        assert all(p["rate"] > 0 and p["p99_ms"] >= p["p50_ms"] for p in phases.values())
        assert all(p["non_2xx"] == 0 for p in phases.values())
        assert phases["api"]["rate_limit_fail_open"] is not None
    for ratio in report["ratios"]:
        per_round = [r["api"]["rate"] / r[ratio["baseline"]]["rate"] for r in report["rounds"]]
        assert ratio["median"] == pytest.approx(statistics.median(per_round))
        assert (ratio["low"], ratio["high"]) == pytest.approx((min(per_round), max(per_round)))
        assert ratio["target"] == TARGETS[ratio["baseline"]]
        assert ratio["met"] == (ratio["median"] >= ratio["target"])
    p99s = [r["api"]["p99_ms"] for r in report["rounds"]]
    assert report["api_p99_ms"]["high"] == pytest.approx(max(p99s))
    assert report["api_p99_ms"]["met"] == (max(p99s) <= P99_TARGET_MS)
    verdicts = [r["met"] for r in report["ratios"]] + [report["api_p99_ms"]["met"]]
    assert report["met"] == (all(verdicts) and not report["invalid_phases"])


def test_the_median_of_round_ratios_decides_not_the_mean_of_rates() -> None:
    report = ApiBenchReport("builtin", 16, 5.0, 1)
    for api, asyncpg in ((900, 1000), (1800, 1000), (880, 1000)):
        report.rounds.append({"asyncpg": phase("asyncpg", asyncpg), "api": phase("api", api)})
    (ratio,) = report.ratios()
    assert ratio.median == pytest.approx(0.9)
    assert (ratio.low, ratio.high) == pytest.approx((0.88, 1.8))
    assert ratio.met and report.met


def test_one_slow_round_fails_the_p99_verdict() -> None:
    report = ApiBenchReport("wrk", 16, 5.0, 1)
    for p99 in (12.0, P99_TARGET_MS + 0.1, 11.0):
        report.rounds.append({"asyncpg": phase("asyncpg", 100), "api": phase("api", 100, p99)})
    assert not report.met
    assert report.as_dict()["api_p99_ms"] == {
        "low": 11.0, "high": P99_TARGET_MS + 0.1, "target": P99_TARGET_MS, "met": False,
    }  # fmt: skip


@pytest.mark.parametrize("flaw", [{"non_2xx": 3}, {"fail_open": 1}])
def test_errors_or_a_skipped_rate_limit_make_the_run_invalid(flaw: dict[str, int]) -> None:
    report = ApiBenchReport("wrk", 16, 5.0, 1)
    report.rounds.append({"asyncpg": phase("asyncpg", 100), "api": phase("api", 500, **flaw)})
    assert report.ratios()[0].met
    assert report.invalid_phases() == ["round 1 api"]
    assert not report.met


def test_a_small_run_with_tracing_exports_the_traced_phase(
    run_cli: RunCli, service_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = small_run(run_cli, monkeypatch, "--baselines", "asyncpg", "--tracing")
    assert [set(phases) for phases in report["rounds"]] == [{"asyncpg", "api", TRACED}] * 2
    assert [r["baseline"] for r in report["ratios"]] == ["asyncpg"]
    per_round = [r[TRACED]["rate"] / r["api"]["rate"] for r in report["rounds"]]
    tracing = report["tracing"]
    assert tracing["ratio"] == "api+tracing/api" and tracing["target"] == TRACING_TARGET
    assert tracing["median"] == pytest.approx(statistics.median(per_round))
    assert (tracing["low"], tracing["high"]) == pytest.approx((min(per_round), max(per_round)))
    assert tracing["otlp_exports"] > 0  # the traced API's spans reached the receiver
    assert tracing["met"] == (tracing["median"] >= TRACING_TARGET)
    cpu = [r[TRACED]["server_cpu_ms_per_request"] / r["api"]["server_cpu_ms_per_request"]
           for r in report["rounds"]]  # fmt: skip
    assert tracing["server_cpu_per_request"]["median"] == pytest.approx(statistics.median(cpu))
    assert tracing["server_cpu_per_request"]["target"] is None


def test_the_tracing_verdict_is_the_median_of_traced_over_untraced_rounds() -> None:
    report = ApiBenchReport("wrk", 16, 5.0, 1, otlp_exports=3)
    for api, traced in ((1000, 950), (1000, 700), (800, 760)):
        phases = {"asyncpg": 1000, "api": api, TRACED: traced}
        report.rounds.append({name: phase(name, rate) for name, rate in phases.items()})
    assert [ratio.baseline for ratio in report.ratios()] == ["asyncpg"]
    tracing = report.tracing_ratio()
    assert tracing is not None
    assert (tracing.median, tracing.low, tracing.high) == pytest.approx((0.95, 0.7, 0.95))
    assert tracing.met and report.as_dict()["tracing"]["met"] is True
    cpu = report.tracing_cpu_ratio()  # every phase cost 1.0 ms of CPU per request
    assert cpu is not None and (cpu.median, cpu.target, cpu.met) == (1.0, None, True)
    report.rounds[0][TRACED] = phase(TRACED, 800)
    assert not report.tracing_ratio().met and not report.met  # type: ignore[union-attr]


def test_a_traced_phase_whose_spans_never_arrived_is_invalid() -> None:
    report = ApiBenchReport("wrk", 16, 5.0, 1, otlp_exports=0)
    report.rounds.append({"api": phase("api", 100), TRACED: phase(TRACED, 100)})
    assert report.invalid_phases() == [f"{TRACED}: no span reached the OTLP receiver"]
    assert not report.met


def test_without_tracing_the_report_has_no_tracing_figures() -> None:
    report = ApiBenchReport("wrk", 16, 5.0, 1)
    report.rounds.append({"asyncpg": phase("asyncpg", 100), "api": phase("api", 100)})
    assert report.tracing_ratio() is None and report.as_dict()["tracing"] is None
    assert report.invalid_phases() == []


def test_rounds_alternate_their_order() -> None:
    assert alternating(3, 3) == [[0, 1, 2], [2, 1, 0], [0, 1, 2]]


def test_usage_errors_are_one_line(run_cli: RunCli) -> None:
    result = run_cli("bench", "api", "--baselines", "django")
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and "--baselines" in result.stderr


def test_sigterm_ends_a_bench_through_its_cleanup() -> None:
    cleaned, before = [], signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as ended, cleaned_up_on_sigterm():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler interrupts this
        finally:
            cleaned.append(True)
    assert ended.value.code == 128 + signal.SIGTERM and cleaned == [True]
    assert signal.getsignal(signal.SIGTERM) == before
