"""Database engine construction and transaction scope."""

from __future__ import annotations

import logging
import math
import re
import select
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import psycopg2
import psycopg2.extensions
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, ExceptionContext, make_url
from sqlalchemy.exc import DBAPIError

from service.config import DatabaseSettings, shipped_driver_url

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 3
SILENCE_MARGIN_SECONDS = 1.0
APPLICATION_NAME = "fintegrate"
READ_ONLY_SQLSTATE = "25006"
CONNECT_TIMEOUT_IN_DSN = re.compile(r"\bconnect_timeout=(\d+)")


def create_db_engine(settings: DatabaseSettings, *, pool_size: int | None = None) -> Engine:
    """An engine with a fixed-size pool, pre-ping and a server-side statement timeout.

    The URL is mapped to the shipped driver here too: ``model_copy(update=...)`` skips the
    settings' validator.
    """
    size = pool_size or settings.pool_size
    engine = create_engine(
        engine_url(settings.url),
        pool_size=size,
        max_overflow=size,
        pool_pre_ping=True,
        pool_timeout=5,
        hide_parameters=True,  # bound values (a customer's name, e-mail) never reach a log
        connect_args={
            "connect_timeout": CONNECT_TIMEOUT_SECONDS,
            "options": f"-c statement_timeout={settings.statement_timeout_ms}",
            "application_name": APPLICATION_NAME,
        },
    )
    event.listen(engine, "handle_error", _drop_connections_on_a_standby)
    return engine


def _drop_connections_on_a_standby(context: ExceptionContext) -> None:
    """A write refused as read-only (SQLSTATE 25006) ran on a standby, e.g. a demoted
    primary: treat it as a disconnect, so the pool discards that connection (pre-ping
    cannot tell, a standby answers it) and the next checkout finds the primary again."""
    if getattr(context.original_exception, "pgcode", None) == READ_ONLY_SQLSTATE:
        context.is_disconnect = True


def libpq_dsn(database_url: str) -> str:
    """A database URL of the settings (any accepted form) as a libpq DSN (``postgresql://``).

    The rest of the URL is kept as given, so a libpq multi-host URL
    (``h1:5491,h2:5492/db?target_session_attrs=read-write``) reaches libpq and asyncpg, which
    both try the hosts in turn and keep the one that accepts writes.
    """
    _scheme, _, rest = shipped_driver_url(database_url).partition("://")
    return f"postgresql://{rest}"


def engine_url(database_url: str) -> URL:
    """The SQLAlchemy URL of a settings database URL, multi-host URLs included.

    SQLAlchemy cannot parse ``h1:5491,h2:5492`` as a netloc; it takes the hosts as repeated
    ``host=`` query parameters instead and hands them to libpq as its host and port lists.
    """
    url = shipped_driver_url(database_url)
    scheme, _, rest = url.partition("://")
    end = min((rest.find(mark) for mark in "/?#" if mark in rest), default=len(rest))
    userinfo, at, hosts = rest[:end].rpartition("@")
    if "," not in hosts:
        return make_url(url)
    single = make_url(f"{scheme}://{userinfo}{at}{rest[end:]}")
    return single.update_query_pairs([("host", host) for host in hosts.split(",")], append=True)


class KeptConnection:
    """One connection of ``engine`` kept from one turn of a loop to the next (a pool
    checkout per turn costs a ping, a round trip); ``discard`` it after an error, as its
    state is unknown: the next ``get`` checks out another."""

    def __init__(self, engine: Engine, isolation_level: str | None = None) -> None:
        self._engine = engine
        self._isolation_level = isolation_level
        self._connection: Connection | None = None

    def get(self) -> Connection:
        """The kept connection (a new one if there is none, or the pool invalidated it)."""
        if self._connection is None or self._connection.invalidated:
            self.discard()
            connection = self._engine.connect()
            if self._isolation_level is not None:
                connection = connection.execution_options(isolation_level=self._isolation_level)
            self._connection = connection
        return self._connection

    def close(self) -> None:
        """Give the connection back to the pool."""
        self._forget(invalidate=False)

    def discard(self) -> None:
        """Invalidate the connection (never reused) and forget it."""
        self._forget(invalidate=True)

    def _forget(self, invalidate: bool) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            if invalidate:
                connection.invalidate()
            connection.close()
        except DBAPIError as exc:  # already broken: the pool discards it
            log.debug("closing a kept connection failed: %s", exc)


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """A connection inside one transaction: committed on success, rolled back on error."""
    with engine.begin() as connection:
        yield connection


def bound_database_waits(settings: DatabaseSettings) -> None:
    """Make every psycopg2 wait in this process give up on a silent database.

    libpq has no client-side timeout: a server that stops answering on an open connection
    (frozen, or a network path that still acknowledges) blocks the caller forever, and its
    statement_timeout cannot fire. With a wait callback psycopg2 drives libpq without
    blocking and this deadline decides: the connect timeout while connecting, the
    statement timeout plus a margin afterwards. On expiry the call raises OperationalError
    (503 in the API, a paused cycle in the relay) and psycopg2 closes that connection.
    psycopg2 takes one callback per process; the API and the relay install it, and it
    bounds only connections tagged ``application_name=fintegrate`` (``create_db_engine``,
    the relay's LISTEN connection); any other connection in the process (long DDL, test
    fixtures) waits as long as it needs.
    """
    query_seconds = settings.statement_timeout_ms / 1000 + SILENCE_MARGIN_SECONDS
    callback = partial(
        wait_with_deadline, connect_seconds=CONNECT_TIMEOUT_SECONDS, query_seconds=query_seconds
    )
    psycopg2.extensions.set_wait_callback(callback)


def wait_limit(dsn: str, connecting: bool, connect_seconds: float, query_seconds: float) -> float:
    """How long one wait may take: what blocking libpq would allow, bounded for our own.

    While connecting, the connection's ``connect_timeout`` (libpq's own rule, which the
    callback must apply itself); afterwards the query bound for connections made by
    ``create_db_engine`` and no bound for any other.
    """
    ours = f"application_name={APPLICATION_NAME}" in dsn
    if connecting:
        match = CONNECT_TIMEOUT_IN_DSN.search(dsn)
        if match and int(match.group(1)) > 0:
            return float(match.group(1))
        return connect_seconds if ours else math.inf
    return query_seconds if ours else math.inf


def wait_with_deadline(connection: Any, connect_seconds: float, query_seconds: float) -> None:
    """Poll ``connection`` until its operation completes or the deadline passes.

    One poll object per wait (poll, unlike select, has no descriptor-number limit); the
    deadline is only computed when the first poll did not finish the operation.
    """
    connecting = connection.status == psycopg2.extensions.STATUS_SETUP
    state = connection.poll()
    if state == psycopg2.extensions.POLL_OK:
        return
    seconds = wait_limit(connection.dsn, connecting, connect_seconds, query_seconds)
    deadline = time.monotonic() + seconds
    poller = select.poll()
    registered = None
    while state != psycopg2.extensions.POLL_OK:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise psycopg2.OperationalError(f"the database did not answer within {seconds:g} s")
        wanted = (
            connection.fileno(),
            select.POLLIN if state == psycopg2.extensions.POLL_READ else select.POLLOUT,
        )
        if wanted != registered:
            if registered is not None:
                poller.unregister(registered[0])
            poller.register(*wanted)
            registered = wanted
        poller.poll(None if remaining == math.inf else remaining * 1000)
        state = connection.poll()
