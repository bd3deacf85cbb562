"""What ``fintegrate bench relay|history|webhooks`` print for people: phases, then verdicts."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fintegrate_cli._output import emit_rows, info
from service.bench.figures import Ratio
from service.bench.history import HistoryBenchReport
from service.bench.history_archive import ARCHIVE_TARGET, RSS_TARGET_MB
from service.bench.relay import RelayBenchReport
from service.bench.relay_fairness import QUIET_P99_TARGET_MS
from service.bench.webhooks import P99_TARGET_MS as WEBHOOK_P99_TARGET_MS
from service.bench.webhooks import WebhookBenchReport

VERDICT_COLUMNS = ["figure", "value", "baseline", "target", "met"]


def rounded(row: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}


def phase_rows(rounds: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per phase, its round number first."""
    return [
        rounded({"round": number, **vars(phase)})
        for number, phases in enumerate(rounds, start=1)
        for phase in phases.values()
    ]


def ratio_verdict(figure: str, ratio: Ratio) -> dict[str, Any]:
    target = "-" if ratio.target is None else f"{'<=' if ratio.at_most else '>='} {ratio.target}"
    return {
        "figure": f"{figure} (median of rounds)",
        "value": f"{ratio.median:.2f} (range {ratio.low:.2f}-{ratio.high:.2f})",
        "baseline": ratio.baseline,
        "target": target,
        "met": ratio.met if ratio.target is not None else "-",
    }


def ceiling_verdict(
    figure: str, values: list[float], target: float, baseline: str
) -> dict[str, Any]:
    return {
        "figure": f"{figure} (every round)",
        "value": f"{min(values):.1f}-{max(values):.1f}",
        "baseline": baseline,
        "target": f"<= {target:g}",
        "met": max(values) <= target,
    }


def show_verdicts(verdicts: list[dict[str, Any]], invalid: list[str]) -> None:
    emit_rows(verdicts, VERDICT_COLUMNS, False, title="verdicts")
    if invalid:
        info(f"invalid phases (their figures would flatter): {invalid}")


CPU_PARTS = ("api", "relay", "worker", "machine")


def show_relay(report: RelayBenchReport) -> None:
    verdicts = []
    if report.drain_rounds:
        columns = ["round", "side", "backlog", "published", "queued", "seconds", "rate"]
        emit_rows(phase_rows(report.drain_rounds), columns, False, title="drain (events/s)")
        verdicts += [ratio_verdict("ordered/baseline", r) for r in report.ratios()]
    if report.latency is not None:
        latency = report.latency
        rows = []
        for number, measured in enumerate(latency.rounds, start=1):
            pipeline, floor = measured.pipeline, measured.raw_pika
            rows.append(rounded({"round": number, **vars(pipeline), "side": "pipeline",
                                 "done": f"{pipeline.handled}/{pipeline.requests}"}))  # fmt: skip
            rows.append(rounded({"round": number, **vars(floor),
                                 "done": f"{floor.received}/{floor.sent}"}))  # fmt: skip
        columns = ["round", "side", "p50_ms", "p99_ms", "due_p99_ms", "publish_lag_p99_ms", "done"]
        title = "end to end: 201 -> handler; raw pika alone"
        if latency.slow_customer is not None:
            title += f" (beside slow customer {latency.slow_customer})"
        emit_rows(rows, columns, False, title=title)
        cpu_rows = [{"round": number, **measured.pipeline.cpu_ms_per_event}
                    for number, measured in enumerate(latency.rounds, start=1)]  # fmt: skip
        cpu_title = "CPU ms per event (machine: everything, PostgreSQL and RabbitMQ too)"
        emit_rows(cpu_rows, ["round", *CPU_PARTS], False, title=cpu_title)
        floors = [measured.raw_pika for measured in latency.rounds]
        p50_target, p99_target = latency.targets
        for figure, values, target in (
            ("p50", latency.p50s(), p50_target),
            ("p99", latency.p99s(), p99_target),
        ):
            if target is None:
                continue
            shown = [getattr(floor, f"{figure}_ms") for floor in floors]
            baseline = f"raw pika {figure} {min(shown):.1f}-{max(shown):.1f}"
            verdicts.append(
                ceiling_verdict(f"201 -> handler {figure} ms", values, target, baseline)
            )
    if report.fairness is not None:
        columns = ["round", "selection", "loud_events", "drain_rate", "quiet_written",
                   "quiet_published", "quiet_p50_ms", "quiet_p99_ms"]  # fmt: skip
        emit_rows(phase_rows(report.fairness.rounds), columns, False, title="fairness")
        ratio = report.fairness.ratio()
        if ratio is not None:
            verdicts.append(ratio_verdict("drain per_tenant/previous", ratio))
            verdicts.append(
                ceiling_verdict(
                    "quiet p99 ms", report.fairness.quiet_p99s(), QUIET_P99_TARGET_MS, "-"
                )
            )
    show_verdicts(verdicts, report.invalid_phases())


def show_history(report: HistoryBenchReport) -> None:
    columns = ["round", "setup", "post_customer_p99_ms", "relay_drain_events_per_s",
               "get_events_first_page_ms", "redeliver_dry_run_ms", "events_stats_ms"]  # fmt: skip
    emit_rows(phase_rows(report.rounds), columns, False, title="rounds (empty is the baseline)")
    verdicts = [ratio_verdict(f"{r.baseline} loaded/empty", r) for r in report.ratios()]
    if report.archive is not None:
        archive = report.archive
        verdicts.append(
            {"figure": "archive events/s", "value": f"{archive.events_per_s:,.0f}",
             "baseline": f"{archive.events_per_s_in_process:,.0f} without CLI start-up",
             "target": f">= {ARCHIVE_TARGET:,}", "met": archive.events_per_s >= ARCHIVE_TARGET}
        )  # fmt: skip
        verdicts.append(
            {"figure": "archive peak RSS MB", "value": f"{archive.peak_rss_mb:.1f}",
             "baseline": "-", "target": f"<= {RSS_TARGET_MB:g}",
             "met": archive.peak_rss_mb <= RSS_TARGET_MB}
        )  # fmt: skip
    show_verdicts(verdicts, report.invalid_phases())


def show_webhooks(report: WebhookBenchReport) -> None:
    rows = [
        rounded({"round": number, "set": key, **vars(phase)})
        for number, sets in enumerate(report.throughput_rounds, start=1)
        for key, phases in sets.items()
        for phase in phases.values()
    ]
    columns = ["round", "set", "side", "endpoints", "expected", "delivered", "seconds", "rate"]
    emit_rows(rows, columns, False, title="throughput (deliveries/s)")
    verdicts = [ratio_verdict("deliverer/baseline", r) for r in report.ratios()]
    if report.latency_rounds:
        columns = ["round", "side", "sent", "received", "p50_ms", "p99_ms"]
        emit_rows(phase_rows(report.latency_rounds), columns, False, title="latency")
        plain = [r["plain"].p99_ms for r in report.latency_rounds]
        baseline = f"plain p99 {min(plain):.1f}-{max(plain):.1f}"
        verdicts.append(
            ceiling_verdict(
                "201 -> receiver p99 ms", report.p99s(), WEBHOOK_P99_TARGET_MS, baseline
            )
        )
    show_verdicts(verdicts, report.invalid_phases())
