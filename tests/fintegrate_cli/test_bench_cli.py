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

import pytest

from service.bench.api import P99_TARGET_MS, TARGETS, ApiBenchReport, Phase
from service.bench.servers import alternating
from service.bench.stack import cleaned_up_on_sigterm
from service.config import Settings
from tests.support.cli import RunCli
from tests.support.services import PG_ADMIN_URL


def phase(server: str, rate: float, p99_ms: float = 10.0, **extra: int) -> Phase:
    return Phase(server, rate, p99_ms / 2, p99_ms, extra.get("non_2xx", 0), 1.0,
                 extra.get("fail_open", 0 if server == "api" else None))  # fmt: skip


def test_a_small_run_reports_every_phase_with_its_baselines(
    run_cli: RunCli, service_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINTEGRATE_BENCH_PG_URL", PG_ADMIN_URL)
    result = run_cli(
        "--json", "bench", "api", "--rounds", "2", "--duration", "1", "--warmup", "0",
        "--connections", "2", "--generator", "builtin", "--bcrypt-rounds", "4",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
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
