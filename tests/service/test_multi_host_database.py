"""libpq multi-host URLs and read-only servers, on every database path.

The failover itself (a private primary killed, its standby promoted, under load) is in
tests/reliability/test_pg_failover.py; here the URL forms and the way a connection that
reached a read-only server is dropped, against the local PostgreSQL.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from service.config import DatabaseSettings, Settings
from service.kit.db import create_db_engine, engine_url, libpq_dsn
from service.kit.db_async import DatabaseUnavailable, close_pool, create_pool, pooled_connection

MULTI = "postgresql://u:p%40w@h1:5491,h2:5492/app?target_session_attrs=read-write"
READ_ONLY = "options=-c%20default_transaction_read_only%3Don"


def test_a_multi_host_url_reaches_libpq_as_given() -> None:
    assert libpq_dsn(MULTI) == MULTI
    assert libpq_dsn(MULTI.replace("postgresql", "postgresql+psycopg2", 1)) == MULTI


def test_sqlalchemy_gets_the_hosts_as_host_parameters() -> None:
    url = engine_url(MULTI)
    engine = create_db_engine(DatabaseSettings(url=MULTI))
    try:
        _, arguments = engine.dialect.create_connect_args(engine.url)
    finally:
        engine.dispose()

    assert url.database == "app" and url.password == "p@w"
    assert url.query["host"] == ("h1:5491", "h2:5492")
    assert arguments["host"] == "h1,h2" and arguments["port"] == "5491,5492"
    assert arguments["target_session_attrs"] == "read-write"


def test_a_single_host_url_is_unchanged() -> None:
    single = "postgresql://u:p@db:5432/app?sslmode=require"
    assert engine_url(single) == make_url("postgresql+psycopg2" + single[len("postgresql") :])


def test_the_local_database_through_a_multi_host_url(settings: Settings) -> None:
    url = make_url(settings.database.url)
    hosts = f"127.0.0.1:1,{url.host}:{url.port}"  # a dead first host, then the real one
    multi = f"postgresql://{url.username}:{url.password}@{hosts}/{url.database}"
    engine = create_db_engine(DatabaseSettings(url=multi), pool_size=1)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()


def read_only(settings: Settings) -> Settings:
    """``settings`` whose sessions are read-only, as on a standby."""
    return settings.updated({"database_url": f"{settings.database.url}?{READ_ONLY}"})


def test_a_write_refused_as_read_only_drops_the_pooled_connection(settings: Settings) -> None:
    engine = create_db_engine(settings.database, pool_size=1)
    try:
        with engine.connect() as connection:
            before = connection.execute(text("SELECT pg_backend_pid()")).scalar()
            connection.execute(text("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"))
            connection.commit()  # this session now behaves as on a standby
            with pytest.raises(DBAPIError) as raised:
                connection.execute(text("CREATE TABLE read_only_probe (x int)"))
        assert raised.value.connection_invalidated  # the handlers answer 503
        with engine.connect() as connection:  # a fresh session: the bad one was dropped
            assert connection.execute(text("SELECT pg_backend_pid()")).scalar() != before
            assert connection.execute(text("SHOW transaction_read_only")).scalar() == "off"
    finally:
        engine.dispose()


def test_the_async_pool_drops_a_connection_on_a_read_only_server(settings: Settings) -> None:
    async def scenario() -> tuple[int, int]:
        pool = await create_pool(read_only(settings).database)
        try:
            with pytest.raises(DatabaseUnavailable, match="ReadOnly"):
                async with pooled_connection(pool) as connection:
                    dropped = await connection.fetchval("SELECT pg_backend_pid()")
                    await connection.execute("CREATE TABLE read_only_probe (x int)")
            async with pooled_connection(pool) as connection:
                fresh = await connection.fetchval("SELECT pg_backend_pid()")
            return dropped, fresh
        finally:
            await close_pool(pool)

    dropped, fresh = asyncio.run(scenario())
    assert fresh != dropped  # the next request got a new session, maybe on the new primary
