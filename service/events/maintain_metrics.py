"""The metrics of `fintegrate maintain` (default registry, served on ``--metrics-port``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

RUNS = Counter(
    "fintegrate_maintain_runs_total",
    "Maintenance job runs by job and result (ok, error, stopped by a signal, skipped: another "
    "run held the history lock).",
    ["job", "result"],
)
LAST_SUCCESS = Gauge(
    "fintegrate_maintain_last_success_timestamp_seconds",
    "Unix time of each job's last successful run.",
    ["job"],
)
ERRORS = Counter("fintegrate_maintain_errors_total", "Failed maintenance job runs.", ["job"])
PARTITIONS_ARCHIVED = Counter(
    "fintegrate_maintain_partitions_archived_total",
    "Partitions archived to files and dropped by the retention job.",
)
EVENTS_ARCHIVED = Counter(
    "fintegrate_maintain_events_archived_total", "Events archived by the retention job."
)
EVENTS_EXPIRED = Counter(
    "fintegrate_maintain_events_expired_total",
    "Published events never confirmed that became final (failed, expired) past the expiry.",
)
DEFAULT_ROWS_MOVED = Counter(
    "fintegrate_maintain_default_ranges_moved_total",
    "Ranges of rows moved out of the DEFAULT partition into a partition of their own.",
)
