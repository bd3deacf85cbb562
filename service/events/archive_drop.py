"""Phase 2 of the archive: detach the archived partitions without queueing the platform.

``DETACH PARTITION … CONCURRENTLY`` takes only a SHARE UPDATE EXCLUSIVE lock on
customer_events (reads and writes go on), waits for the transactions that might still see
the partition, then locks only that partition. PostgreSQL (14-17) refuses it while a
DEFAULT partition is attached, so the run takes the DEFAULT partition off first - only
when it is empty, so no row ever disappears from view - and always puts it back (a kill in
between is repaired by the next run: ``service.events.repair``). While it is off, an insert
whose range has no partition fails; the API writes ``now()``, whose partition exists.
When the DEFAULT partition holds rows (they move out on the next maintenance pass), each
partition is detached the plain way instead: a brief ACCESS EXCLUSIVE lock on
customer_events, under the same short lock timeout.

A concurrent detach interrupted after its first transaction (lock timeout, kill) leaves the
partition "detach pending": invisible to new queries, finished with ``DETACH … FINALIZE``.
Each detached partition's counts leave the maintained counters in the transaction that
drops it, and the manifest then records the drop.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, text

from service.events import partitions, stats
from service.events.archive_files import Manifest
from service.events.locks import LockBusy, LockPolicy, describe_holders, retry_locked

if TYPE_CHECKING:
    from service.events.archive_plan import ArchiveResult, PartitionPlan

log = logging.getLogger(__name__)


class _DefaultHoldsRows(Exception):
    """The DEFAULT partition is not empty: keep it, detach the plain way."""


def drop_partitions(
    engine: Engine,
    written: list[PartitionPlan],
    manifest: Manifest,
    result: ArchiveResult,
    policy: LockPolicy,
    stop: threading.Event | None,
) -> None:
    """Detach and drop every written partition; the ones locked out are left (reported)."""
    if not written:
        return
    concurrent = _take_default_off(engine, policy, stop)
    try:
        for index, part in enumerate(written):
            if stop is not None and stop.is_set():
                _release(engine, written[index:], result, policy, "stopped by a signal")
                return
            try:
                _detach(engine, part.name, policy, stop, concurrent)
                drop_detached(engine, part.name, part.counts, policy)
            except LockBusy as exc:
                log.warning("%s", exc)
                _release(engine, [part], result, policy, str(exc))
                continue
            manifest.mark_dropped(part.name)
            result.dropped.append(part.name)
    finally:
        if concurrent:
            put_default_back(engine, policy)


def drop_detached(
    engine: Engine, name: str, counts: list[dict[str, Any]], policy: LockPolicy
) -> None:
    """Subtract its counts and drop the detached table: one transaction."""

    def attempt() -> None:
        with engine.begin() as connection:
            policy.set_local(connection)
            stats.subtract_counts(connection, json.dumps(counts))
            partitions.drop_detached(connection, name)

    retry_locked(f"dropping {name}", attempt, policy, lambda: describe_holders(engine, name))


def finish_detach(engine: Engine, name: str, policy: LockPolicy) -> None:
    """``DETACH … FINALIZE`` of a partition left detach pending (lock timeout, kill)."""
    _detach(engine, name, policy, None, concurrent=True)


def put_default_back(engine: Engine, policy: LockPolicy) -> None:
    def attempt() -> None:
        with engine.begin() as connection:
            policy.set_local(connection)
            if not partitions.default_attached(connection):
                partitions.attach_default(connection)

    try:
        retry_locked("attaching the DEFAULT partition again", attempt, policy)
    except LockBusy as exc:  # the next run of maintenance or archive repairs it
        log.error("%s", exc)


def _take_default_off(engine: Engine, policy: LockPolicy, stop: threading.Event | None) -> bool:
    """Whether the DEFAULT partition is off, so the detaches may run concurrently."""

    def attempt() -> bool:
        try:
            with engine.begin() as connection:
                policy.set_local(connection)
                if not partitions.default_attached(connection):
                    return True
                partitions.detach_default(connection)
                if partitions.default_holds_rows(connection):
                    raise _DefaultHoldsRows  # rolls the detach back
            return True
        except _DefaultHoldsRows:
            return False

    try:
        return retry_locked("detaching the DEFAULT partition", attempt, policy, stop=stop)
    except LockBusy as exc:
        log.warning("%s; detaching the plain way", exc)
        return False


def _detach(
    engine: Engine,
    name: str,
    policy: LockPolicy,
    stop: threading.Event | None,
    concurrent: bool,
) -> None:
    def attempt() -> None:
        if not concurrent:
            with engine.begin() as connection:
                policy.set_local(connection)
                partitions.detach(connection, name)
            return
        with engine.connect() as plain:
            connection = plain.execution_options(isolation_level="AUTOCOMMIT")
            pending = partitions.detach_pending(connection, name)
            if pending is None:
                return  # already detached
            connection.execute(text(f"SET lock_timeout = {int(policy.timeout_ms)}"))
            try:
                partitions.detach_concurrently(connection, name, finalize=pending)
            finally:
                connection.execute(text("RESET lock_timeout"))

    retry_locked(f"detaching {name}", attempt, policy, lambda: describe_holders(engine, name), stop)


def _release(
    engine: Engine,
    parts: list[PartitionPlan],
    result: ArchiveResult,
    policy: LockPolicy,
    reason: str,
) -> None:
    """Partitions not dropped: writable again, unless their detach is already pending."""
    for part in parts:
        result.skipped[part.name] = reason
        with engine.connect() as connection:
            pending = partitions.detach_pending(connection, part.name)
        if pending is False:
            _unfreeze_or_log(engine, part.name, policy)


def unfreeze_partition(engine: Engine, name: str, policy: LockPolicy) -> None:
    """Make a frozen partition writable again, retrying its lock as ``policy`` says;
    ``LockBusy`` (naming the holders) when the lock stays taken."""

    def attempt() -> None:
        with engine.begin() as connection:
            policy.set_local(connection)
            partitions.unfreeze(connection, name)

    retry_locked(f"unfreezing {name}", attempt, policy, lambda: describe_holders(engine, name))


def _unfreeze_or_log(engine: Engine, name: str, policy: LockPolicy) -> None:
    try:
        unfreeze_partition(engine, name, policy)
    except LockBusy as exc:  # repaired by the next run
        log.error("%s", exc)
