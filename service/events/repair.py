"""Finish or undo what a killed archive left behind; run first by every archive and by
every `fintegrate maintain` pass, under the history lock (so no archive is in flight).

What a kill (even ``kill -9``) can leave, and what becomes of it:
- the DEFAULT partition detached (killed during the concurrent detaches): attached again;
- a partition "detach pending" that carries the freeze mark: its file was complete and
  verified before the detach began, so the detach is finished (``FINALIZE``) and the table
  dropped with its counts;
- a detached table that carries the freeze mark (killed between detach and drop): dropped
  with its counts, for the same reason;
- a partition still attached and frozen (killed while writing files): unfrozen, so writes
  reach it again; the next archive freezes it and rewrites its file whole.
``inspect_leftovers`` lists the same without changing anything (for `fintegrate doctor`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine

from service.events import archive_drop, partitions
from service.events.archive_plan import count_partition
from service.events.locks import LockBusy, LockPolicy

log = logging.getLogger(__name__)


def inspect_leftovers(engine: Engine) -> list[str]:
    """What a killed archive left, one phrase each (changes nothing)."""
    with engine.connect() as connection:
        found = [] if partitions.default_attached(connection) else ["DEFAULT partition detached"]
        for part in partitions.list_partitions(connection):
            if part.detach_pending:
                found.append(f"{part.name} detach pending")
            elif part.frozen:
                found.append(f"{part.name} frozen")
        found += [f"{name} detached, not dropped" for name in _detached(connection)]
    return found


def repair_history(engine: Engine, policy: LockPolicy) -> list[str]:
    """Repair every leftover (see module doc); what was repaired, one phrase each.

    A leftover whose lock stays taken is logged and left for the next run.
    """
    repaired: list[str] = []
    with engine.connect() as connection:
        default_off = not partitions.default_attached(connection)
        listed = partitions.list_partitions(connection)
        detached = _detached(connection)
    for part in listed:
        if part.detach_pending and part.frozen:
            finish = _bind(_finish, engine, part.name, policy)
            _attempt(repaired, f"finished the detach of {part.name}", finish)
        elif part.frozen and not part.detach_pending:
            thaw = _bind(archive_drop.unfreeze_partition, engine, part.name, policy)
            _attempt(repaired, f"unfroze {part.name}", thaw)
    for name in detached:
        _attempt(repaired, f"dropped the detached {name}", _bind(_drop, engine, name, policy))
    if default_off:
        archive_drop.put_default_back(engine, policy)
        repaired.append("attached the DEFAULT partition again")
    for line in repaired:
        log.warning("repaired after an interrupted archive: %s", line)
    return repaired


def _detached(connection: Connection) -> list[str]:
    return partitions.detached_frozen_tables(connection)


def _attempt(repaired: list[str], done: str, action: Callable[[], None]) -> None:
    try:
        action()
    except LockBusy as exc:
        log.error("%s", exc)
        return
    repaired.append(done)


def _bind(
    action: Callable[[Engine, str, LockPolicy], None], engine: Engine, name: str, policy: LockPolicy
) -> Callable[[], None]:
    return lambda: action(engine, name, policy)


def _finish(engine: Engine, name: str, policy: LockPolicy) -> None:
    archive_drop.finish_detach(engine, name, policy)
    _drop(engine, name, policy)


def _drop(engine: Engine, name: str, policy: LockPolicy) -> None:
    with engine.begin() as connection:
        counted = count_partition(connection, name, None, datetime.max.replace(tzinfo=UTC))
    archive_drop.drop_detached(engine, name, counted.counts, policy)
