"""``fintegrate bench history``: a small real run, and the report's arithmetic and honesty.

Timings are never asserted; every ratio must follow from the phases the report lists.
"""

from __future__ import annotations

import pytest

from fintegrate_cli._bench_tables import show_history
from service.bench.history import (
    FIGURES,
    RATIO_TARGET,
    HistoryBenchOptions,
    HistoryBenchReport,
    HistoryPhase,
)
from service.bench.history_archive import ARCHIVE_TARGET, RSS_TARGET_MB
from service.config import Settings
from tests.support.cli import RunCli, json_of
from tests.support.services import PG_ADMIN_URL

SMALL_HISTORY = (
    "--events", "200", "--days", "14", "--requests", "8", "--rounds", "1", "--backlog", "10",
    "--samples", "3",
)  # fmt: skip


def phase(setup: str, scale: float, **flaw: int) -> HistoryPhase:
    return HistoryPhase(setup, 10 * scale, flaw.get("post_failures", 0), 1000 / scale,
                        20, flaw.get("drained", 20), 5 * scale, 50 * scale, 8 * scale)  # fmt: skip


def test_a_small_run_compares_the_loaded_setup_with_the_empty_one(
    run_cli: RunCli, service_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINTEGRATE_BENCH_PG_URL", PG_ADMIN_URL)
    report = json_of(run_cli("--json", "bench", "history", *SMALL_HISTORY))
    (phases,) = report["rounds"]
    assert set(phases) == {"empty", "loaded"}
    for phase in phases.values():
        assert phase["drained"] == phase["backlog"] >= 10 and phase["post_failures"] == 0
    ratios = {r["baseline"]: r for r in report["ratios"]}
    assert set(ratios) == set(FIGURES)
    for figure, ratio in ratios.items():
        empty, loaded = phases["empty"][figure], phases["loaded"][figure]
        expected = empty / loaded if figure.endswith("_per_s") else loaded / empty
        assert ratio["median"] == pytest.approx(expected)
        assert ratio["target"] == RATIO_TARGET and ratio["at_most"]
        assert ratio["met"] == (ratio["median"] <= RATIO_TARGET)
    archive = report["archive"]
    assert archive["events_per_s"] == pytest.approx(archive["archived_events"] / archive["seconds"])
    assert archive["peak_rss_mb"] > 0
    assert archive["targets"] == {"events_per_s": ARCHIVE_TARGET, "peak_rss_mb": RSS_TARGET_MB}
    assert report["table_bytes_loaded"] > 0 and report["invalid_phases"] == []
    verdicts = [r["met"] for r in report["ratios"]] + [archive["met"]]
    assert report["met"] == all(verdicts)


def test_the_loaded_setup_is_compared_round_by_round() -> None:
    report = HistoryBenchReport(HistoryBenchOptions())
    for scale in (1.0, 2.0, 1.1):
        report.rounds.append({"empty": phase("empty", 1.0), "loaded": phase("loaded", scale)})
    for ratio in report.ratios():
        assert ratio.median == pytest.approx(1.1) and (ratio.low, ratio.high) == (1.0, 2.0)
        assert ratio.met
    assert not report.met  # no archive figures: the run is not complete


@pytest.mark.parametrize("flaw", [{"post_failures": 1}, {"drained": 19}])
def test_a_failed_post_or_an_undrained_backlog_makes_the_round_invalid(
    flaw: dict[str, int],
) -> None:
    report = HistoryBenchReport(HistoryBenchOptions())
    report.rounds.append({"empty": phase("empty", 1.0), "loaded": phase("loaded", 1.0, **flaw)})
    assert report.invalid_phases() == ["round 1 loaded"]


def test_people_see_the_empty_setup_as_the_baseline(capsys: pytest.CaptureFixture[str]) -> None:
    report = HistoryBenchReport(HistoryBenchOptions())
    report.rounds.append({"empty": phase("empty", 1.0), "loaded": phase("loaded", 1.5)})
    show_history(report)
    shown = capsys.readouterr().out
    assert "empty is the baseline" in shown and "loaded/empty" in shown and "False" in shown
