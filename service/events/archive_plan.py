"""What an archive run would do: the partitions past the cut-off and their exact counts.

Nothing here changes the database (``plan_archive`` is the preview and the dry run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, text

from service.events import partitions
from service.events.archive_files import ArchiveError, check_directory
from service.events.finality import EXPIRABLE_EVENT, FINAL_EVENT
from service.webhooks.delivery import repository as webhook_deliveries

NOW = text("SELECT now()")
NO_TIMEOUT = text("SET LOCAL statement_timeout = 0")
EXPIRING = f"({EXPIRABLE_EVENT} AND created_at < CAST(:expire_before AS timestamptz))"
PARTITION_COUNTS = f"""
    SELECT consumer_id, event_type, publish_status, deliver_status, count(*) AS count,
           bool_and({FINAL_EVENT}) AS final, bool_and({EXPIRING}) AS expirable,
           min(created_at) AS first_created_at, max(created_at) AS last_created_at
    FROM {{table}} GROUP BY 1, 2, 3, 4, {EXPIRING}
"""  # noqa: S608 - constant conditions; the table name is checked
# A server-side cursor, not COPY: COPY cannot run under the psycopg2 wait callback the
# service installs (service.kit.db.bound_database_waits), and the relay runs the retention.
STATUS_KEYS = ("consumer_id", "event_type", "publish_status", "deliver_status")


@dataclass
class PartitionPlan:
    """One partition past the cut-off, with its exact counts."""

    name: str
    range_start: datetime | None
    range_end: datetime
    events: int = 0
    not_final: int = 0
    expirable: int = 0
    first_created_at: datetime | None = None
    last_created_at: datetime | None = None
    counts: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "partition": self.name,
            "range_start": self.range_start.isoformat() if self.range_start else None,
            "range_end": self.range_end.isoformat(),
            "events": self.events,
            "not_final": self.not_final,
            "to_expire": self.expirable,
            "first_created_at": _iso(self.first_created_at),
            "last_created_at": _iso(self.last_created_at),
        }


@dataclass
class ArchivePlan:
    """What a run would do: partitions to archive, and partitions kept with their reason."""

    older_than_days: int
    cutoff: datetime
    directory: Path
    expire_before: datetime | None = None
    expiry_days: int | None = None
    default_rows: int = 0
    archive: list[PartitionPlan] = field(default_factory=list)
    keep: list[PartitionPlan] = field(default_factory=list)

    @property
    def events(self) -> int:
        return sum(p.events for p in self.archive)

    def as_dict(self) -> dict[str, Any]:
        return {
            "older_than_days": self.older_than_days,
            "cutoff": self.cutoff.isoformat(),
            "directory": str(self.directory),
            "events_to_archive": self.events,
            "events_to_expire": sum(p.expirable for p in self.archive),
            "expire_before": _iso(self.expire_before),
            "events_kept_not_final": sum(p.not_final for p in self.keep),
            "events_in_default_partition": self.default_rows,
            "archive": [p.as_dict() for p in self.archive],
            "keep": [p.as_dict() for p in self.keep],
        }


@dataclass
class ArchiveResult:
    """What a run did."""

    plan: ArchivePlan
    files: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    expired_events: int = 0
    repaired: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    elapsed_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.plan.as_dict(),
            "archived_events": sum(f["events"] for f in self.files),
            "expired_events": self.expired_events,
            "files": self.files,
            "dropped_partitions": self.dropped,
            "repaired": self.repaired,
            "skipped": self.skipped,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def check_days(older_than_days: int) -> None:
    if older_than_days <= 0:
        raise ArchiveError(
            f"--older-than must be at least 1 day (got {older_than_days}); "
            "events younger than the cut-off are never archived"
        )


def plan_archive(
    engine: Engine,
    older_than_days: int,
    directory: str | Path,
    expiry_days: int | None = None,
) -> ArchivePlan:
    """Validate the input, then count every partition past the cut-off (nothing changes).

    With ``expiry_days``, events never confirmed that many days after their creation count
    as final (the run expires them first).
    """
    check_days(older_than_days)
    target = check_directory(Path(directory))
    with engine.begin() as connection:
        connection.execute(NO_TIMEOUT)
        now = connection.execute(NOW).scalar_one()
        cutoff = now - timedelta(days=older_than_days)
        expire_before = now - timedelta(days=expiry_days) if expiry_days else None
        plan = ArchivePlan(older_than_days, cutoff, target, expire_before, expiry_days)
        plan.default_rows = partitions.default_rows_before(connection, cutoff)
        for part in partitions.list_partitions(connection):
            if part.range_end is None or part.range_end > cutoff or part.detach_pending:
                continue
            counted = count_partition(
                connection, part.name, part.range_start, part.range_end, expire_before
            )
            archivable = counted.not_final == counted.expirable
            (plan.archive if archivable else plan.keep).append(counted)
    return plan


def count_partition(
    connection: Connection,
    name: str,
    start: datetime | None,
    end: datetime,
    expire_before: datetime | None = None,
) -> PartitionPlan:
    """Exact per-group counts of one partition (one scan of it)."""
    query = text(PARTITION_COUNTS.format(table=checked_name(name)))
    rows = connection.execute(query, {"expire_before": expire_before}).all()
    plan = PartitionPlan(name, start, end)
    for row in rows:
        group = dict(row._mapping)
        first, last = group.pop("first_created_at"), group.pop("last_created_at")
        final, expirable = group.pop("final"), group.pop("expirable")
        group["consumer_id"] = str(group["consumer_id"])
        plan.counts.append(group)
        plan.events += group["count"]
        if not final:
            plan.not_final += group["count"]
            plan.expirable += group["count"] if expirable else 0
        plan.first_created_at = min(filter(None, (plan.first_created_at, first)))
        plan.last_created_at = max(filter(None, (plan.last_created_at, last)))
    # The webhook channel (SPEC 8): an event is final only when every channel is.
    plan.not_final += webhook_deliveries.pending_in_range(connection, start, end)
    plan.counts = _merged(plan.counts)
    return plan


def _merged(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One count per (consumer, type, statuses): the expirable split is only for the plan."""
    merged: dict[tuple[str, ...], dict[str, Any]] = {}
    for group in groups:
        key = tuple(str(group[k]) for k in STATUS_KEYS)
        if key in merged:
            merged[key]["count"] += group["count"]
        else:
            merged[key] = dict(group)
    return list(merged.values())


def checked_name(name: str) -> str:
    if not partitions.PARTITION_NAME.match(name):
        raise ValueError(f"not a customer_events partition name: {name!r}")
    return name
