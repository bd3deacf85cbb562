"""``fintegrate bench relay``: small real runs, and the report's arithmetic and honesty.

Timings are never asserted: the machine may be busy. What is asserted is that every
figure the report prints follows from the phases it measured, and that a phase which
did not publish everything is flagged.
"""

from __future__ import annotations

import pstats
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fintegrate_cli._bench_tables import show_relay
from fintegrate_cli._errors import EXIT_PARTIAL, CheckFailed
from fintegrate_cli.bench import finish
from service.bench import stack
from service.bench.figures import Arrivals
from service.bench.relay import (
    SIDES,
    TARGETS,
    DrainPhase,
    RelayBenchOptions,
    RelayBenchReport,
    drain_rounds,
    pending,
)
from service.bench.relay_fairness import (
    QUIET_P99_TARGET_MS,
    SELECTIONS,
    FairnessOptions,
    FairnessPhase,
    FairnessReport,
)
from service.bench.relay_latency import (
    P50_TARGET_MS,
    P99_TARGET_MS,
    SLOW_CUSTOMER_P99_TARGET_MS,
    LatencyFigures,
    LatencyOptions,
    LatencyReport,
    LatencyRound,
)
from service.config import Settings
from tests.support.cli import RunCli, json_of
from tests.support.services import PG_ADMIN_URL

SMALL_DRAIN = (
    "--events", "30", "--customers", "5", "--batch-size", "10", "--rounds", "1",
    "--skip-latency",
)  # fmt: skip
SMALL_LATENCY = (
    "--skip-drain", "--rate", "5", "--duration", "1", "--api-workers", "1", "--rounds", "1",
)  # fmt: skip
SMALL_FAIRNESS = (
    "--fairness", "--fairness-events", "40", "--customers", "5", "--quiet-rate", "20",
    "--rounds", "1",
)  # fmt: skip


@pytest.fixture
def bench_env(service_env: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The configured stack of this worker; the bench makes its own database and vhost."""
    monkeypatch.setenv("FINTEGRATE_BENCH_PG_URL", PG_ADMIN_URL)
    monkeypatch.setenv("FINTEGRATE_BCRYPT_ROUNDS", "4")
    return service_env


def drain(side: str, rate: float, published: int = 100, backlog: int = 100) -> DrainPhase:
    return DrainPhase.of(side, backlog, published, published, published / rate)


def assert_rates_follow(phases: dict[str, Any], published: str, rate: str = "rate") -> None:
    for phase in phases.values():
        assert phase[rate] == pytest.approx(phase[published] / phase["seconds"])


def test_a_small_drain_reports_every_side_with_its_baselines(
    run_cli: RunCli, bench_env: Settings, tmp_path: Path
) -> None:
    profile = tmp_path / "relay.pstats"
    report = json_of(run_cli("--json", "bench", "relay", *SMALL_DRAIN, "--profile", str(profile)))
    assert report["backlog"] == {"events": 30, "customers": 5} and report["batch_size"] == 10
    (phases,) = report["drain_rounds"]
    assert list(phases) == list(SIDES)
    assert all(p["backlog"] == p["published"] == p["queued"] == 30 for p in phases.values())
    assert_rates_follow(phases, "published")
    for ratio in report["drain_ratios"]:
        expected = phases["ordered"]["rate"] / phases[ratio["baseline"]]["rate"]
        assert ratio["median"] == ratio["low"] == ratio["high"] == pytest.approx(expected)
        assert ratio["target"] == TARGETS[ratio["baseline"]]
        assert ratio["met"] == (ratio["median"] >= ratio["target"])
    assert report["latency"] is None and report["fairness"] is None
    assert report["invalid_phases"] == []
    assert report["met"] == all(r["met"] for r in report["drain_ratios"])
    assert pstats.Stats(str(profile)).total_calls > 0  # type: ignore[attr-defined]


def test_a_small_latency_run_counts_every_customer_and_message(
    run_cli: RunCli, bench_env: Settings
) -> None:
    report = json_of(run_cli("--json", "bench", "relay", *SMALL_LATENCY))
    latency = report["latency"]
    assert report["drain_rounds"] == [] and report["drain_ratios"] == []
    (measured,) = latency["rounds"]
    pipeline, floor = measured["pipeline"], measured["raw_pika"]
    assert pipeline["requests"] == pipeline["answered_201"] == pipeline["handled"] == 5
    assert floor["sent"] == floor["received"] == 5
    assert report["invalid_phases"] == []
    for phase in (pipeline, floor):
        assert phase["p99_ms"] >= phase["p50_ms"] > 0
    assert pipeline["max_ms"] >= pipeline["p99_ms"]
    assert pipeline["publish_lag_p99_ms"] >= pipeline["publish_lag_p50_ms"] > 0
    cpu = pipeline["cpu_ms_per_event"]  # ticks of 10 ms: a few events may cost none
    assert set(cpu) == {"api", "relay", "worker", "machine"} and min(cpu.values()) >= 0
    assert cpu["machine"] > 0
    p50, p99 = latency["p50_ms"], latency["p99_ms"]
    assert (p50["high"], p99["high"]) == (pipeline["p50_ms"], pipeline["p99_ms"])
    assert (p50["target"], p99["target"]) == (P50_TARGET_MS, P99_TARGET_MS)
    met = pipeline["p50_ms"] <= P50_TARGET_MS and pipeline["p99_ms"] <= P99_TARGET_MS
    assert latency["met"] == met == report["met"]


def test_a_lost_message_invalidates_its_latency_round() -> None:
    figures = LatencyFigures(5, 1, 5, 5, 5, 1.0, 2.0, 3.0, 1.0, 2.0, 0.5, 1.0)
    report = LatencyReport(LatencyOptions(rounds=1))
    report.rounds.append(LatencyRound(figures, Arrivals("raw_pika", 5, 4, 0.5, 1.0)))
    assert report.met and report.invalid_phases() == ["latency round 1 raw_pika"]


def test_a_small_fairness_run_compares_with_the_previous_selection(
    run_cli: RunCli, bench_env: Settings
) -> None:
    report = json_of(run_cli("--json", "bench", "relay", *SMALL_FAIRNESS))
    fairness = report["fairness"]
    assert report["drain_rounds"] == [] and report["latency"] is None
    (phases,) = fairness["rounds"]
    assert list(phases) == list(SELECTIONS)
    for phase in phases.values():
        assert phase["loud_events"] == phase["loud_published"] == 40
        assert phase["quiet_written"] == phase["quiet_published"] > 0
    assert_rates_follow(phases, "loud_published", "drain_rate")
    ratio = fairness["drain_ratio"]
    expected = phases["per_tenant"]["drain_rate"] / phases["previous"]["drain_rate"]
    assert ratio["median"] == pytest.approx(expected) and ratio["baseline"] == "previous"
    quiet = fairness["quiet_p99_ms"]
    assert quiet["high"] == phases["per_tenant"]["quiet_p99_ms"]
    assert quiet["met"] == (quiet["high"] <= QUIET_P99_TARGET_MS)
    assert fairness["met"] == (ratio["met"] and quiet["met"]) == report["met"]


def test_the_median_of_round_ratios_decides_not_the_ratio_of_median_rates() -> None:
    report = RelayBenchReport(100, 10, 10)
    for ordered, unordered in ((900, 1000), (1800, 1000), (880, 1000)):
        phases = {"raw_pika": drain("raw_pika", 100), "unordered": drain("unordered", unordered)}
        report.drain_rounds.append({**phases, "ordered": drain("ordered", ordered)})
    ratio = next(r for r in report.ratios() if r.baseline == "unordered")
    assert ratio.median == pytest.approx(statistics.median([0.9, 1.8, 0.88]))
    assert (ratio.low, ratio.high) == pytest.approx((0.88, 1.8))
    assert ratio.met and report.met


@pytest.mark.parametrize("flaw", [{"published": 99}, {"backlog": 101}])
def test_a_phase_that_missed_events_makes_the_run_invalid(flaw: dict[str, int]) -> None:
    report = RelayBenchReport(100, 10, 10)
    phases = {"raw_pika": drain("raw_pika", 100), "unordered": drain("unordered", 100)}
    report.drain_rounds.append({**phases, "ordered": drain("ordered", 1000, **flaw)})
    assert all(ratio.met for ratio in report.ratios())
    assert report.invalid_phases() == ["drain round 1 ordered"]
    assert not report.met


def test_an_unpublished_quiet_event_invalidates_the_fairness_round() -> None:
    report = FairnessReport(FairnessOptions())
    short = FairnessPhase("per_tenant", 10, 10, 1.0, 10.0, 5, 4, 1.0, 2.0)
    whole = replace(short, selection="previous", quiet_published=5)
    report.rounds.append({"per_tenant": short, "previous": whole})
    ratio = report.ratio()
    assert ratio is not None and ratio.met
    assert report.invalid_phases() == ["fairness round 1 per_tenant"]


def test_usage_errors_are_one_line(run_cli: RunCli) -> None:
    result = run_cli("bench", "relay", "--rounds", "0")
    assert result.exit_code == 2 and "--rounds" in result.stderr


def test_people_see_each_baseline_and_check_exits_3_on_an_invalid_phase(
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = RelayBenchReport(100, 10, 10)
    phases = {"raw_pika": drain("raw_pika", 100), "unordered": drain("unordered", 100)}
    report.drain_rounds.append({**phases, "ordered": drain("ordered", 1000, published=99)})
    report.latency = LatencyReport(LatencyOptions(rounds=1))
    cpu = {"api": 2.04, "relay": 1.0, "worker": 0.96, "machine": 8.0}
    figures = LatencyFigures(5, 1, 5, 5, 5, 1.0, 2.0, 3.0, 1.0, 2.0, 0.5, 1.0, cpu)
    report.latency.rounds.append(LatencyRound(figures, Arrivals("raw_pika", 5, 5, 0.2, 0.4)))
    with pytest.raises(CheckFailed) as failed:
        finish("relay", report, show_relay, as_json=False, check=True)
    assert failed.value.exit_code == EXIT_PARTIAL
    shown = capsys.readouterr()
    assert "verdicts" in shown.out and "unordered" in shown.out and "raw_pika" in shown.out
    assert "raw pika p99" in shown.out and "5/5" in shown.out
    assert "CPU ms per event" in shown.out and "2.04" in shown.out and "0.96" in shown.out
    assert "drain round 1 ordered" in shown.err


def test_the_drain_rounds_leave_no_backlog_for_the_latency_run(bench_env: Settings) -> None:
    options = RelayBenchOptions(events=20, customers=4, batch_size=10, rounds=2, latency=None)
    with stack.isolated(bench_env, {}) as settings:
        rounds = drain_rounds(settings, options, lambda line: None)
        assert [list(phases) for phases in rounds] == [list(SIDES)] * 2
        assert pending(settings) == 0  # round 2 ends with raw pika, which marks nothing


def test_beside_a_slow_customer_only_the_others_are_measured_against_two_seconds(
    run_cli: RunCli, bench_env: Settings
) -> None:
    args = ("--json", "bench", "relay", *SMALL_LATENCY, "--slow-customer-seconds", "0.2")
    report = json_of(run_cli(*args))
    latency = report["latency"]
    assert latency["slow_customer_seconds"] == 0.2 and latency["slow_customer"]
    (measured,) = latency["rounds"]
    pipeline = measured["pipeline"]
    assert pipeline["requests"] == pipeline["answered_201"] == pipeline["handled"] == 5
    assert latency["p99_ms"]["target"] == SLOW_CUSTOMER_P99_TARGET_MS
    assert latency["met"] == (pipeline["p99_ms"] <= SLOW_CUSTOMER_P99_TARGET_MS)


def test_a_slow_customer_run_holds_no_p50_target(capsys: pytest.CaptureFixture[str]) -> None:
    report = RelayBenchReport(100, 10, 10)
    report.latency = LatencyReport(LatencyOptions(rounds=1, slow_customer_seconds=3.0))
    report.latency.slow_customer = "c-slow"
    figures = LatencyFigures(5, 1, 5, 5, 5, 500.0, 1500.0, 1600.0, 1.0, 2.0, 0.5, 1.0)
    report.latency.rounds.append(LatencyRound(figures, Arrivals("raw_pika", 5, 5, 0.2, 0.4)))
    assert report.latency.targets == (None, SLOW_CUSTOMER_P99_TARGET_MS)
    assert report.latency.met  # p50 500 ms would miss 20 ms; only p99 <= 2 s holds here
    finish("relay", report, show_relay, as_json=False, check=False)
    shown = capsys.readouterr().out
    assert "slow customer c-slow" in shown
    assert "201 -> handler p99" in shown and "201 -> handler p50" not in shown
