"""Locks of history maintenance: short DDL lock waits with back-off, and one run at a time.

Every DDL of maintenance (freeze, unfreeze, detach, attach, create, drop) asks for its lock
with a short ``lock_timeout``. While an ALTER waits for its lock, every query that needs the
table queues behind it; with a short timeout that queue lasts at most that long, then the
ALTER gives up and is tried again after a growing pause (``retry_locked``). When the total
budget is spent the work in hand is left as it was and ``LockBusy`` names who holds the lock.

One maintenance run at a time is a PostgreSQL session advisory lock (``SessionLock``) held
on a connection of its own: it goes with the session, so a killed process never leaves it
behind, and the holder's ``application_name`` says who it is.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg2
import psycopg2.extensions
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError, OperationalError

from service.config import DatabaseSettings, HistorySettings, shipped_driver_url
from service.kit.db import CONNECT_TIMEOUT_SECONDS, libpq_dsn

log = logging.getLogger(__name__)

T = TypeVar("T")
LOCK_NOT_AVAILABLE = "55P03"
DEADLOCK_DETECTED = "40P01"
FIRST_PAUSE_SECONDS = 0.25
LONGEST_PAUSE_SECONDS = 5.0
# Advisory lock keys (two int4): the history work (archive, maintenance passes) and the
# `fintegrate maintain` process itself.
LOCK_CLASS = 0x46494E54  # "FINT"
HISTORY_WORK = 1
MAINTAIN_PROCESS = 2
# Long scans and copies must not depend on the API's statement bound; a silent server is
# found by TCP keepalives instead (about a minute).
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
HOLDERS = text(
    """
    SELECT a.pid, a.application_name, a.state, a.xact_start, l.mode
    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'relation' AND l.relation = to_regclass(:relation) AND l.granted
      AND l.pid <> pg_backend_pid()
    ORDER BY a.xact_start NULLS LAST
    LIMIT 3
    """
)
ADVISORY_HOLDER = """
    SELECT a.pid, a.application_name, a.backend_start
    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.classid = %s AND l.objid = %s AND l.objsubid = 2
      AND l.granted
"""


class LockBusy(Exception):
    """A lock stayed taken for the whole retry budget; one line naming its holder."""


@dataclass(frozen=True)
class LockPolicy:
    """How long one lock request may wait, and for how long requests are retried."""

    timeout_ms: int = 100
    retry_seconds: float = 60.0

    @classmethod
    def from_settings(cls, settings: HistorySettings) -> LockPolicy:
        return cls(settings.lock_timeout_ms, settings.lock_retry_seconds)

    def set_local(self, connection: Connection) -> None:
        """This transaction's lock waits give up after ``timeout_ms``."""
        connection.execute(text(f"SET LOCAL lock_timeout = {int(self.timeout_ms)}"))


def create_maintenance_engine(settings: DatabaseSettings, application_name: str) -> Engine:
    """An engine of maintenance's own: no statement timeout, keepalives, a few connections."""
    return create_engine(
        shipped_driver_url(settings.url),
        pool_size=3,
        max_overflow=2,
        pool_pre_ping=True,
        connect_args={
            "connect_timeout": CONNECT_TIMEOUT_SECONDS,
            # a killed client's backend stops waiting for a lock within a second, instead
            # of staying in the lock queue (with everyone behind it) until its timeout
            "options": "-c statement_timeout=0 -c client_connection_check_interval=1000",
            "application_name": application_name,
            **KEEPALIVES,
        },
    )


def is_lock_timeout(exc: BaseException) -> bool:
    code = getattr(getattr(exc, "orig", exc), "pgcode", None)
    return code in (LOCK_NOT_AVAILABLE, DEADLOCK_DETECTED)


def retry_locked(
    what: str,
    attempt: Callable[[], T],
    policy: LockPolicy,
    holders: Callable[[], str] = lambda: "",
    stop: threading.Event | None = None,
) -> T:
    """``attempt()`` until it gets its locks; back-off between tries; LockBusy at the end."""
    started = time.monotonic()
    pause = FIRST_PAUSE_SECONDS
    tries = 0
    while True:
        tries += 1
        try:
            return attempt()
        except DBAPIError as exc:
            if not is_lock_timeout(exc):
                raise
        spent = time.monotonic() - started
        if spent + pause > policy.retry_seconds or (stop is not None and stop.is_set()):
            raise LockBusy(
                f"{what}: the lock is held by another session{holders()}; gave up after "
                f"{tries} tries in {spent:.0f} s; nothing changed, run again once it is released"
            )
        log.info("%s: lock busy, try %d again in %.2f s", what, tries, pause)
        if stop is not None:
            stop.wait(pause)
        else:
            time.sleep(pause)
        pause = min(pause * 2, LONGEST_PAUSE_SECONDS)


def describe_holders(engine: Engine, relation: str) -> str:
    """`` (pid 12, psql, idle in transaction since 10:02:03)`` for the sessions on it."""
    try:
        with engine.connect() as connection:
            rows = connection.execute(HOLDERS, {"relation": relation}).all()
    except DBAPIError:
        return ""
    if not rows:
        return ""
    parts = [
        f"pid {r.pid}, {r.application_name or 'no application name'}, {r.state}"
        + (f" since {r.xact_start:%H:%M:%S}" if r.xact_start else "")
        + f", {r.mode}"
        for r in rows
    ]
    return " (" + "; ".join(parts) + ")"


def process_label(role: str) -> str:
    """``fintegrate <role> pid N@host``, cut to PostgreSQL's 63-byte application_name."""
    return f"fintegrate {role} pid {os.getpid()}@{socket.gethostname()}"[:63]


def advisory_holder(connection: Connection, key: int) -> str | None:
    """Who holds one of the history's advisory locks (``application_name``), or None."""
    raw: Any = connection.connection.driver_connection
    with raw.cursor() as cursor:
        cursor.execute(ADVISORY_HOLDER, (LOCK_CLASS, key))
        found = cursor.fetchone()
    return None if found is None else f"{found[1] or 'a session'} (backend pid {found[0]})"


class SessionLock:
    """A session advisory lock on a connection of its own; ``acquire`` never waits."""

    def __init__(self, settings: DatabaseSettings, key: int, role: str) -> None:
        self.dsn = libpq_dsn(settings.url)
        self.key = key
        self.label = process_label(role)
        self.connection: Any = None

    def acquire(self) -> str | None:
        """None once held; else one line saying who holds it."""
        try:
            connection = psycopg2.connect(
                self.dsn,
                application_name=self.label,
                connect_timeout=CONNECT_TIMEOUT_SECONDS,
                **KEEPALIVES,
            )
        except psycopg2.OperationalError as exc:  # reported like any unreachable database
            raise OperationalError("connect", None, exc) from exc
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", (LOCK_CLASS, self.key))
            if cursor.fetchone()[0]:
                self.connection = connection
                return None
            cursor.execute(ADVISORY_HOLDER, (LOCK_CLASS, self.key))
            holder = cursor.fetchone()
        connection.close()
        if holder is None:
            return "held by a session that just ended; try again"
        who, pid, since = holder[1] or "a session", holder[0], holder[2]
        return f"held by {who} (backend pid {pid}) since {since:%Y-%m-%d %H:%M:%S %Z}"

    def alive(self) -> bool:
        """Whether the lock's session still answers (a lost session lost the lock)."""
        if self.connection is None or self.connection.closed:
            return False
        try:
            with self.connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            return True
        except psycopg2.Error:
            return False

    def release(self) -> None:
        if self.connection is not None and not self.connection.closed:
            self.connection.close()  # the session's advisory locks go with it
        self.connection = None
