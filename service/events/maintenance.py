"""History upkeep for the relay's maintenance loop: partitions ahead, counts, retention."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import Engine

from service.config import Settings
from service.events import archive, partitions, stats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HistoryMaintenance:
    """What one pass did."""

    partitions_created: int
    count_rows_folded: int
    archived_events: int = 0
    dropped_partitions: int = 0
    error: str | None = None


def ensure_partitions(engine: Engine, settings: Settings) -> int:
    """Create the partitions ahead (startup and every maintenance pass)."""
    with engine.begin() as connection:
        return partitions.ensure_partitions(connection, settings.event_partition_span_days)


def run_history_maintenance(engine: Engine, settings: Settings) -> HistoryMaintenance:
    """Partitions ahead, counts folded, and the retention archive when configured.

    Never raises: a failure is logged and returned in ``error`` (the next pass retries).
    """
    try:
        created = ensure_partitions(engine, settings)
        with engine.begin() as connection:
            folded = stats.compact_counts(connection)
    except Exception as exc:
        log.exception("history maintenance failed")
        return HistoryMaintenance(0, 0, error=str(exc).splitlines()[0])
    if settings.event_retention_days is None or not settings.event_archive_dir:
        return HistoryMaintenance(created, folded)
    try:
        plan = archive.plan_archive(
            engine, settings.event_retention_days, settings.event_archive_dir
        )
        result = archive.run_archive(engine, plan)
    except Exception as exc:
        log.exception("retention archive failed")
        return HistoryMaintenance(created, folded, error=str(exc).splitlines()[0])
    if result.dropped:
        log.info("retention archived %d events, dropped %s", result.plan.events, result.dropped)
    return HistoryMaintenance(created, folded, result.plan.events, len(result.dropped))
