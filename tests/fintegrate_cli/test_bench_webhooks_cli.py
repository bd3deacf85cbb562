"""``fintegrate bench webhooks``: a small real run, and the report's arithmetic and honesty.

Timings are never asserted; every figure must follow from the phases the report lists.
"""

from __future__ import annotations

import pytest

from fintegrate_cli._bench_tables import show_webhooks
from service.bench.figures import Arrivals
from service.bench.webhooks import (
    P99_TARGET_MS,
    RATIO_TARGET,
    ThroughputPhase,
    WebhookBenchOptions,
    WebhookBenchReport,
)
from service.config import Settings
from tests.support.cli import RunCli, json_of
from tests.support.services import PG_ADMIN_URL

SMALL_WEBHOOKS = (
    "--events", "10", "--customers", "3", "--endpoints", "2", "--rounds", "1", "--rate", "5",
    "--duration", "1",
)  # fmt: skip


def test_a_small_run_reports_both_sides_and_the_ratios_of_their_rates(
    run_cli: RunCli, service_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINTEGRATE_BENCH_PG_URL", PG_ADMIN_URL)
    monkeypatch.setenv("FINTEGRATE_BCRYPT_ROUNDS", "4")
    report = json_of(run_cli("--json", "bench", "webhooks", *SMALL_WEBHOOKS))
    (sets,) = report["throughput_rounds"]
    assert set(sets) == {"one_endpoint", "many_endpoints"}
    for phases in sets.values():
        assert set(phases) == {"deliverer", "plain"}
        for phase in phases.values():
            assert phase["delivered"] == phase["expected"] == 10
            assert phase["rate"] == pytest.approx(phase["delivered"] / phase["seconds"])
    by_set = {r["baseline"]: r for r in report["throughput_ratios"]}
    for key, phases in sets.items():
        ratio = by_set[f"plain ({key})"]
        expected = phases["deliverer"]["rate"] / phases["plain"]["rate"]
        assert ratio["median"] == pytest.approx(expected)
    assert by_set["plain (many_endpoints)"]["target"] == RATIO_TARGET
    assert by_set["plain (one_endpoint)"]["target"] is None
    (latency,) = report["latency_rounds"]
    assert all(p["received"] == p["sent"] == 5 for p in latency.values())
    assert all(p["p99_ms"] >= p["p50_ms"] > 0 for p in latency.values())
    p99 = report["latency_p99_ms"]
    assert p99["high"] == latency["deliverer"]["p99_ms"]
    assert p99["met"] == (p99["high"] <= P99_TARGET_MS)
    assert report["invalid_phases"] == []
    ratios_met = all(r["met"] for r in report["throughput_ratios"])
    assert report["met"] == (ratios_met and p99["met"])


def test_a_lost_delivery_makes_the_run_invalid() -> None:
    report = WebhookBenchReport(WebhookBenchOptions(latency=False))
    whole = ThroughputPhase("plain", 1, 10, 10, 1.0, 10.0)
    short = ThroughputPhase("deliverer", 1, 10, 9, 0.1, 90.0)
    report.throughput_rounds.append(
        {key: {"deliverer": short, "plain": whole} for key in ("one_endpoint", "many_endpoints")}
    )
    assert all(ratio.met for ratio in report.ratios())
    assert report.invalid_phases() == [
        "throughput round 1 one_endpoint deliverer",
        "throughput round 1 many_endpoints deliverer",
    ]
    assert not report.met


def test_one_slow_latency_round_fails_the_p99_verdict() -> None:
    report = WebhookBenchReport(WebhookBenchOptions())
    plain = Arrivals("plain", 5, 5, 1.0, 2.0)
    for p99 in (20.0, P99_TARGET_MS + 1):
        deliverer = Arrivals("deliverer", 5, 5, 10.0, p99)
        report.latency_rounds.append({"deliverer": deliverer, "plain": plain})
    assert report.p99s() == [20.0, P99_TARGET_MS + 1]
    assert not report.met


def test_people_see_the_plain_loop_beside_the_deliverer(capsys: pytest.CaptureFixture[str]) -> None:
    report = WebhookBenchReport(WebhookBenchOptions())
    phases = {
        "deliverer": ThroughputPhase("deliverer", 20, 10, 10, 1.0, 10.0),
        "plain": ThroughputPhase("plain", 20, 10, 10, 0.5, 20.0),
    }
    report.throughput_rounds.append({"one_endpoint": phases, "many_endpoints": phases})
    plain = Arrivals("plain", 5, 5, 1.0, 2.0)
    report.latency_rounds.append(
        {"deliverer": Arrivals("deliverer", 5, 5, 9.0, 12.0), "plain": plain}
    )
    show_webhooks(report)
    shown = capsys.readouterr().out
    assert "plain p99 2.0-2.0" in shown and "many_endpoints" in shown and "0.50" in shown
