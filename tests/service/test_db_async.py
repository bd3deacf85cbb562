"""The asyncpg pool of the hot write path, against the real PostgreSQL."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from service.config import Settings
from service.kit.db import APPLICATION_NAME, CONNECT_TIMEOUT_SECONDS, libpq_dsn
from service.kit.db_async import (
    DatabaseUnavailable,
    close_pool,
    create_pool,
    is_database_outage,
    pooled_connection,
)


def with_pool(settings: Settings, work: Callable[[Any], Awaitable[Any]]) -> Any:
    """Run ``work(pool)`` on a fresh pool and event loop, closing both."""

    async def run() -> Any:
        pool = await create_pool(settings.database)
        try:
            return await work(pool)
        finally:
            await close_pool(pool)

    return asyncio.run(run())


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_dsn_drops_the_sqlalchemy_driver_and_keeps_everything_else():
    url = "postgresql+psycopg2://user:s3cret@db.example:6543/app?sslmode=require"

    assert libpq_dsn(url) == "postgresql://user:s3cret@db.example:6543/app?sslmode=require"


def test_connections_carry_the_application_name_and_statement_timeout(settings: Settings):
    tuned = settings.updated({"db_statement_timeout_ms": 1234})

    async def session_settings(pool: Any) -> tuple[str, str]:
        async with pooled_connection(pool) as connection:
            row = await connection.fetchrow(
                "SELECT current_setting('application_name'), current_setting('statement_timeout')"
            )
        assert row is not None
        return row[0], row[1]

    assert with_pool(tuned, session_settings) == (APPLICATION_NAME, "1234ms")


def test_the_pool_starts_empty_so_the_api_starts_while_the_database_is_down(
    settings: Settings,
):
    down = settings.updated({"database_url": f"postgresql://nobody@127.0.0.1:{closed_port()}/none"})

    async def size(pool: Any) -> int:
        return int(pool.get_size())

    assert with_pool(down, size) == 0


def test_an_unreachable_database_raises_database_unavailable_within_the_bound(
    settings: Settings,
):
    down = settings.updated({"database_url": f"postgresql://nobody@127.0.0.1:{closed_port()}/none"})

    async def use(pool: Any) -> None:
        async with pooled_connection(pool) as connection:
            await connection.fetchval("SELECT 1")

    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable, match=r"ConnectionRefusedError|OSError"):
        with_pool(down, use)
    assert time.monotonic() - started < CONNECT_TIMEOUT_SECONDS + 1


def test_a_statement_over_the_timeout_is_database_unavailable(settings: Settings):
    tuned = settings.updated({"db_statement_timeout_ms": 200})

    async def slow(pool: Any) -> None:
        async with pooled_connection(pool) as connection:
            await connection.execute("SELECT pg_sleep(5)")

    with pytest.raises(DatabaseUnavailable, match="QueryCanceledError"):
        with_pool(tuned, slow)


def test_a_released_connection_never_carries_an_open_transaction(settings: Settings):
    one_connection = settings.updated({"db_pool_size": 1})

    async def leave_transaction_open(pool: Any) -> bool:
        async with pooled_connection(pool) as connection:
            await connection.execute("BEGIN")
        async with pooled_connection(pool) as connection:
            return bool(connection.is_in_transaction())

    assert with_pool(one_connection, leave_transaction_open) is False


@pytest.mark.parametrize(
    ("error", "outage"),
    [
        (
            asyncpg.ObjectNotInPrerequisiteStateError(
                'database "x" is not currently accepting connections'
            ),
            True,
        ),
        (asyncpg.ObjectNotInPrerequisiteStateError("cannot refresh materialized view"), False),
        (asyncpg.TooManyConnectionsError("too many connections for database"), True),
        (asyncpg.AdminShutdownError("terminating connection"), True),
        (asyncpg.CannotConnectNowError("the database system is starting up"), True),
        (asyncpg.ConnectionFailureError("connection failure"), True),
        (asyncpg.UniqueViolationError("duplicate key"), False),
        (asyncpg.DataError("invalid input"), False),
        (ConnectionRefusedError(111, "refused"), True),
    ],
)
def test_outages_are_told_apart_from_other_database_errors(error: Exception, outage: bool):
    assert is_database_outage(error) is outage
