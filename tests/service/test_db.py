"""The API's database wait bound applies to its own connections only."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import psycopg2
import psycopg2.extensions
import pytest
from sqlalchemy.engine import make_url

from service.config import Settings
from service.kit.db import APPLICATION_NAME, bound_database_waits
from tests.support.tcp_proxy import TcpProxy


@pytest.fixture
def bounded_waits(settings: Settings) -> Iterator[None]:
    """Install the bound with a 0.1 s statement timeout (1.1 s bound); restore afterwards."""
    previous = psycopg2.extensions.get_wait_callback()
    bound_database_waits(settings.database.model_copy(update={"statement_timeout_ms": 100}))
    yield
    psycopg2.extensions.set_wait_callback(previous)


@pytest.fixture
def slow_link(
    settings: Settings, tcp_proxy_factory: Callable[[str, int], TcpProxy]
) -> Iterator[tuple[TcpProxy, Callable[..., psycopg2.extensions.connection]]]:
    url = make_url(settings.database.url)
    proxy = tcp_proxy_factory(url.host or "127.0.0.1", url.port or 5432)
    opened: list[psycopg2.extensions.connection] = []

    def connect(application_name: str, **extra: int) -> psycopg2.extensions.connection:
        connection = psycopg2.connect(
            host=proxy.host,
            port=proxy.port,
            dbname=url.database,
            user=url.username,
            password=url.password,
            application_name=application_name,
            **extra,
        )
        opened.append(connection)
        return connection

    yield proxy, connect
    for connection in opened:
        connection.close()


def test_only_fintegrate_connections_are_bounded(
    bounded_waits: None,
    slow_link: tuple[TcpProxy, Callable[..., psycopg2.extensions.connection]],
) -> None:
    proxy, connect = slow_link
    ours, other = connect(APPLICATION_NAME), connect("fixture")
    proxy.delay(1.5)
    with pytest.raises(psycopg2.OperationalError, match=r"did not answer within 1\.1 s"):
        ours.cursor().execute("SELECT 1")
    cursor = other.cursor()
    cursor.execute("SELECT 1")
    assert cursor.fetchone() == (1,)


def test_connect_timeout_of_any_connection_is_honoured(
    bounded_waits: None,
    slow_link: tuple[TcpProxy, Callable[..., psycopg2.extensions.connection]],
) -> None:
    """With the callback installed psycopg2 connects asynchronously, so the callback applies
    libpq's connect_timeout itself: a silent server fails the connect instead of hanging."""
    proxy, connect = slow_link
    proxy.blackhole()
    with pytest.raises(psycopg2.OperationalError, match=r"did not answer within 2 s"):
        connect("fixture", connect_timeout=2)
