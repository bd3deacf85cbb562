"""SQL of the partitioned outbox: partitions ahead, the list of partitions, their freezing,
the DEFAULT partition's rows moved out, and the detach and drop of archived partitions.

customer_events is range-partitioned by created_at (migration 20261202_0700). The SQL
function ``fintegrate_ensure_event_partitions`` creates partitions ahead; a DEFAULT partition
takes rows whose range has no partition yet, so an insert never fails. None of these
functions sets a lock timeout: the callers do (``service.events.locks``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, text

PARTITIONS_AHEAD = 2
PARTITION_NAME = re.compile(r"^customer_events_[a-z0-9_]+$")
DEFAULT_PARTITION = "customer_events_default"
# A NOT VALID CHECK (false) refuses every insert and update on the partition from the moment
# it is added, without scanning it: the partition's rows cannot change while being archived.
FREEZE_CONSTRAINT = "customer_events_archiving"

ENSURE = text("SELECT fintegrate_ensure_event_partitions(:span_days, :ahead)")
LIST = text(
    """
    SELECT c.relname AS name,
           substring(pg_get_expr(c.relpartbound, c.oid) FROM $r$FROM \\('([^']+)'\\)$r$)
               ::timestamptz AS range_start,
           fintegrate_event_partition_upper(c.oid) AS range_end,
           c.reltuples::bigint AS estimated_rows,
           pg_total_relation_size(c.oid) AS total_bytes,
           EXISTS (SELECT 1 FROM pg_constraint k
                   WHERE k.conrelid = c.oid AND k.conname = :freeze) AS frozen,
           i.inhdetachpending AS detach_pending
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'customer_events'::regclass
    ORDER BY range_end NULLS LAST, c.relname
    """
)
# Partitions whose pending partial indexes PostgreSQL last counted empty (VACUUM or ANALYZE
# ran while nothing was pending). The planner scales a partial index's recorded tuple
# density (zero) to its current size, so it takes such an index for empty however many
# events have landed since, and every plan of the relay's DUE_HEADS looks free: right after
# a backlog lands the per-head probe can be planned as a full scan of the pending index
# until autovacuum's next ANALYZE, which on a partition of millions of rows waits for 2% of
# them to change (docs/events.md, "counted empty").
COUNTED_EMPTY = text(
    """
    SELECT DISTINCT t.relname AS name
    FROM pg_inherits h
    JOIN pg_class ix ON ix.oid = h.inhrelid
    JOIN pg_index i ON i.indexrelid = ix.oid
    JOIN pg_class t ON t.oid = i.indrelid
    WHERE h.inhparent IN ('ix_customer_events_pending'::regclass,
                          'ix_customer_events_pending_aggregate'::regclass)
      AND ix.reltuples = 0
    ORDER BY 1
    """
)
DEFAULT_ATTACHED = text(
    "SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass(:name))"
).bindparams(name=DEFAULT_PARTITION)
DEFAULT_HOLDS_ROWS = text("SELECT EXISTS (SELECT 1 FROM customer_events_default)")
OLDEST_DEFAULT_ROW = text("SELECT min(created_at) FROM customer_events_default")
DEFAULT_ROWS_BEFORE = text("SELECT count(*) FROM customer_events_default WHERE created_at < :at")
DETACH_PENDING = text(
    "SELECT inhdetachpending FROM pg_inherits "
    "WHERE inhrelid = to_regclass(:name) AND inhparent = 'customer_events'::regclass"
)
CREATE = text("SELECT fintegrate_create_event_partition(:start, :end)")
DETACHED_FROZEN = text(
    """
    SELECT c.relname FROM pg_class c
    WHERE c.relkind = 'r' AND c.relname LIKE 'customer\\_events\\_%' AND NOT c.relispartition
      AND EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = c.oid AND k.conname = :freeze)
    ORDER BY 1
    """
)
SMALL_SAMPLE = text("SET LOCAL default_statistics_target = 10")
# Off for the next statement's transaction: the pending partial index is the only way left.
NO_SEQUENTIAL_SCAN = text("SET LOCAL enable_seqscan = off")


@dataclass(frozen=True)
class Partition:
    """One partition of customer_events; ``range_end`` is None for the DEFAULT one."""

    name: str
    range_start: datetime | None
    range_end: datetime | None
    estimated_rows: int
    total_bytes: int
    frozen: bool
    detach_pending: bool = False


def ensure_partitions(connection: Connection, span_days: int) -> int:
    """Create the partitions missing up to ``PARTITIONS_AHEAD`` spans ahead; how many."""
    created: int = connection.execute(
        ENSURE, {"span_days": span_days, "ahead": PARTITIONS_AHEAD}
    ).scalar_one()
    return created


def list_partitions(connection: Connection) -> list[Partition]:
    """Every partition, oldest range first, the DEFAULT one last."""
    rows = connection.execute(LIST, {"freeze": FREEZE_CONSTRAINT}).all()
    return [Partition(**row._mapping) for row in rows]


def uncounted_backlog(connection: Connection, at_least: int) -> list[str]:
    """Partitions holding ``at_least`` pending events while their pending indexes are
    counted empty (fewer would not mislead the planner much, and a sample would miss them).
    """
    counted_empty = connection.execute(COUNTED_EMPTY).scalars().all()
    connection.execute(NO_SEQUENTIAL_SCAN)
    return [name for name in counted_empty if _pending_at_least(connection, name, at_least)]


def _pending_at_least(connection: Connection, name: str, count: int) -> bool:
    table = _table(name)
    query = (
        f"SELECT count(*) FROM (SELECT 1 FROM ONLY {table}"  # noqa: S608 - checked name
        " WHERE publish_status = 'pending' LIMIT :count) AS pending"
    )
    return int(connection.execute(text(query), {"count": count}).scalar_one()) >= count


def analyze(connection: Connection, name: str) -> None:
    """Fresh statistics for one partition from a small sample (3,000 rows).

    Enough to count its pending indexes again, which is what the relay needs, and far
    quicker than the default 30,000-row sample on a partition of millions of rows (figures:
    docs/events.md). Autovacuum's next ANALYZE restores the full statistics.
    """
    connection.execute(SMALL_SAMPLE)
    connection.execute(text(f"ANALYZE {_table(name)}"))


def _table(name: str) -> str:
    """The partition's name, checked before it goes into DDL."""
    if not PARTITION_NAME.match(name):
        raise ValueError(f"not a customer_events partition name: {name!r}")
    return name


def freeze(connection: Connection, name: str) -> None:
    """Refuse every further write to the partition (idempotent)."""
    connection.execute(
        text(
            f"ALTER TABLE {_table(name)} DROP CONSTRAINT IF EXISTS {FREEZE_CONSTRAINT}, "
            f"ADD CONSTRAINT {FREEZE_CONSTRAINT} CHECK (false) NOT VALID"
        )
    )


def unfreeze(connection: Connection, name: str) -> None:
    """Allow writes to the partition again (after an archive run that did not drop it)."""
    connection.execute(
        text(f"ALTER TABLE {_table(name)} DROP CONSTRAINT IF EXISTS {FREEZE_CONSTRAINT}")
    )


def detach_and_drop(connection: Connection, name: str) -> None:
    """Remove the partition and its rows at once (no DELETE: the append-only rule holds)."""
    connection.execute(text(f"ALTER TABLE customer_events DETACH PARTITION {_table(name)}"))
    connection.execute(text(f"DROP TABLE {_table(name)}"))


def detach(connection: Connection, name: str) -> None:
    """The plain DETACH: a brief ACCESS EXCLUSIVE lock on customer_events (caller's timeout)."""
    connection.execute(text(f"ALTER TABLE customer_events DETACH PARTITION {_table(name)}"))


def detach_pending(connection: Connection, name: str) -> bool | None:
    """True when detach pending, False when attached, None when no longer a partition."""
    pending: bool | None = connection.execute(DETACH_PENDING, {"name": name}).scalar_one_or_none()
    return pending


def detach_concurrently(connection: Connection, name: str, finalize: bool) -> None:
    """``DETACH PARTITION … CONCURRENTLY`` (``FINALIZE`` for one interrupted halfway).

    Runs outside a transaction block (an AUTOCOMMIT connection) and only while no DEFAULT
    partition is attached (PostgreSQL 14-17 refuse it otherwise).
    """
    mode = "FINALIZE" if finalize else "CONCURRENTLY"
    connection.execute(text(f"ALTER TABLE customer_events DETACH PARTITION {_table(name)} {mode}"))


def drop_detached(connection: Connection, name: str) -> None:
    connection.execute(text(f"DROP TABLE {_table(name)}"))


def default_attached(connection: Connection) -> bool:
    return bool(connection.execute(DEFAULT_ATTACHED).scalar_one())


def default_holds_rows(connection: Connection) -> bool:
    return bool(connection.execute(DEFAULT_HOLDS_ROWS).scalar_one())


def detach_default(connection: Connection) -> None:
    """Take the (empty) DEFAULT partition off for the concurrent detaches: a brief ACCESS
    EXCLUSIVE lock on customer_events, under the caller's lock_timeout."""
    connection.execute(text(f"ALTER TABLE customer_events DETACH PARTITION {DEFAULT_PARTITION}"))


def attach_default(connection: Connection) -> None:
    """Put the DEFAULT partition back (SHARE UPDATE EXCLUSIVE on customer_events)."""
    connection.execute(
        text(f"ALTER TABLE customer_events ATTACH PARTITION {DEFAULT_PARTITION} DEFAULT")
    )


def detached_frozen_tables(connection: Connection) -> list[str]:
    """Former partitions an archive detached but did not drop yet (they carry the freeze)."""
    rows = connection.execute(DETACHED_FROZEN, {"freeze": FREEZE_CONSTRAINT}).scalars().all()
    return [name for name in rows if PARTITION_NAME.match(name)]


def oldest_default_row(connection: Connection) -> datetime | None:
    oldest: datetime | None = connection.execute(OLDEST_DEFAULT_ROW).scalar_one()
    return oldest


def default_rows_before(connection: Connection, at: datetime) -> int:
    """Rows waiting in DEFAULT created before ``at`` (0 while DEFAULT is detached: none)."""
    if not default_attached(connection):
        return 0
    return int(connection.execute(DEFAULT_ROWS_BEFORE, {"at": at}).scalar_one())


def create_partition(connection: Connection, start: datetime, end: datetime) -> str:
    """Create the partition [start, end), moving its rows in from DEFAULT (one transaction)."""
    name: str = connection.execute(CREATE, {"start": start, "end": end}).scalar_one()
    return name
