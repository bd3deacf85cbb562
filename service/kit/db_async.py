"""The asyncio database pool (asyncpg) of the API's hot write paths.

Most routes are plain ``def`` on the SQLAlchemy engine of ``service.kit.db``. The two hot
writes, ``POST /customer/data`` and the worker's ``POST /events/confirm-delivery``, run on
the event loop instead: one asyncpg statement each, no thread-pool hand-off (see
docs/benchmarks.md). Both pools use the same URL, size,
statement timeout and ``application_name``.

Bounds: connecting gives up after ``CONNECT_TIMEOUT_SECONDS``, waiting for a pooled
connection after ``POOL_TIMEOUT_SECONDS``, and every statement after the statement timeout
plus a margin, so a silent database costs a request a bounded wait and a 503
(``DatabaseUnavailable``), never a hang. The pool starts empty and grows on demand, so the
API starts while the database is down, and asyncpg replaces a connection the server closed
(restart, failover) before it is handed out again.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import TYPE_CHECKING

import asyncpg
import asyncpg.pool

from service.config import DatabaseSettings
from service.kit.db import (
    APPLICATION_NAME,
    CONNECT_TIMEOUT_SECONDS,
    READ_ONLY_SQLSTATE,
    SILENCE_MARGIN_SECONDS,
    libpq_dsn,
)

POOL_TIMEOUT_SECONDS = 5.0
IDLE_CONNECTION_SECONDS = 300.0

# What "the database is unreachable or gone" looks like from asyncpg: connection-level
# Postgres errors (class 08, shutdown, too many connections), a closed connection, a socket
# error, and our own timeouts. Anything else (a constraint, a bug) is not a 503.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.QueryCanceledError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)


# A backend terminated under an idle pooled connection (57P01 sent between statements)
# leaves asyncpg's protocol in a state where the next statement fails with
# InternalClientError; that connection is unusable and is terminated.
BROKEN_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.InterfaceError,
)

OUTAGE_CANDIDATES: tuple[type[BaseException], ...] = (*UNAVAILABLE_ERRORS, asyncpg.PostgresError)

# SQLSTATEs of a database that refuses or drops connections: class 08 (connection
# exception), too many connections, admin/crash shutdown, cannot connect now. 55000 is
# generic ("object not in prerequisite state") and only an outage with this message.
# 25006 (read-only transaction): the connection reached a standby, e.g. a former primary
# that a switchover demoted; the write belongs on the new primary, so it is an outage of
# this connection, which is dropped (see ``is_on_a_standby``).
OUTAGE_SQLSTATES = frozenset({"53300", "57P01", "57P02", "57P03", READ_ONLY_SQLSTATE})
NOT_ACCEPTING_CONNECTIONS = "not currently accepting connections"


def is_database_outage(exc: BaseException) -> bool:
    """True for errors that mean "the database is unreachable or refusing us", from asyncpg
    or psycopg2 alike (its SQLSTATE is ``sqlstate`` or ``pgcode``), else False."""
    if isinstance(exc, UNAVAILABLE_ERRORS):
        return True
    sqlstate = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    if not isinstance(sqlstate, str):
        return NOT_ACCEPTING_CONNECTIONS in str(exc)
    if sqlstate == "55000":
        return NOT_ACCEPTING_CONNECTIONS in str(exc)
    return sqlstate.startswith("08") or sqlstate in OUTAGE_SQLSTATES


def is_on_a_standby(exc: BaseException) -> bool:
    """The statement ran on a read-only server (a standby or a demoted primary)."""
    sqlstate = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    return sqlstate == READ_ONLY_SQLSTATE


if TYPE_CHECKING:
    PooledConnection = asyncpg.pool.PoolConnectionProxy[asyncpg.Record]
else:
    PooledConnection = asyncpg.pool.PoolConnectionProxy


class DatabaseUnavailable(Exception):
    """The database could not serve this request (answered as 503 with Retry-After)."""


async def keep_session(connection: asyncpg.Connection) -> None:
    """Release hook: nothing to undo (asyncpg itself still rolls back an open transaction).

    The pool only runs self-contained statements (no SET, LISTEN, advisory lock or cursor),
    so asyncpg's default reset query, a round trip on every release, would clean nothing.
    """


async def create_pool(settings: DatabaseSettings) -> asyncpg.Pool:
    """An empty pool of at most ``db_pool_size`` connections, bounded as described above."""
    pool = asyncpg.create_pool(
        dsn=libpq_dsn(settings.url),
        min_size=0,
        max_size=settings.pool_size,
        timeout=CONNECT_TIMEOUT_SECONDS,
        command_timeout=settings.statement_timeout_ms / 1000 + SILENCE_MARGIN_SECONDS,
        max_inactive_connection_lifetime=IDLE_CONNECTION_SECONDS,
        reset=keep_session,
        server_settings={
            "application_name": APPLICATION_NAME,
            "statement_timeout": str(settings.statement_timeout_ms),
        },
    )
    return await pool


async def close_pool(pool: asyncpg.Pool) -> None:
    """Close gracefully (in-flight statements finish); terminate after the pool timeout."""
    try:
        await asyncio.wait_for(pool.close(), POOL_TIMEOUT_SECONDS)
    except TimeoutError:
        pool.terminate()


def pooled_connection(pool: asyncpg.Pool) -> PoolCheckout:
    """``async with pooled_connection(pool) as connection``: a connection of ``pool``;
    unreachable-database failures become DatabaseUnavailable."""
    return PoolCheckout(pool)


class PoolCheckout:
    """The context of ``pooled_connection``: a class, not a generator, since both hot
    write paths enter it on every request.

    A connection the statement found broken (or on a standby) is terminated, so the pool
    opens a fresh one for the next request; an outage while acquiring, using or releasing
    the connection is raised as DatabaseUnavailable.
    """

    __slots__ = ("_acquired", "_connection")

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._acquired = pool.acquire(timeout=POOL_TIMEOUT_SECONDS)

    async def __aenter__(self) -> PooledConnection:
        try:
            self._connection: PooledConnection = await self._acquired.__aenter__()
        except OUTAGE_CANDIDATES as exc:
            if is_database_outage(exc):
                raise unavailable(exc) from exc
            raise
        return self._connection

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if isinstance(exc, BROKEN_CONNECTION_ERRORS) or (
            isinstance(exc, asyncpg.PostgresError) and is_on_a_standby(exc)
        ):
            self._connection.terminate()
        try:
            await self._acquired.__aexit__(exc_type, exc, traceback)
        except OUTAGE_CANDIDATES as release_failed:
            if is_database_outage(release_failed):
                raise unavailable(release_failed) from release_failed
            raise
        if isinstance(exc, OUTAGE_CANDIDATES) and is_database_outage(exc):
            raise unavailable(exc) from exc


def unavailable(exc: BaseException) -> DatabaseUnavailable:
    return DatabaseUnavailable(f"{type(exc).__name__}: {exc}")
