"""The fault-injection proxy against the real Redis and PostgreSQL."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from urllib.parse import urlsplit

import psycopg2
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import Engine

from tests.support.tcp_proxy import TcpProxy

ProxyFactory = Callable[[str, int], TcpProxy]


@pytest.fixture
def redis_proxy(tcp_proxy_factory: ProxyFactory, redis_url: str) -> TcpProxy:
    target = urlsplit(redis_url)
    return tcp_proxy_factory(target.hostname or "127.0.0.1", target.port or 6379)


@pytest.fixture
def pg_proxy(tcp_proxy_factory: ProxyFactory, pg_admin_engine: Engine) -> TcpProxy:
    url = pg_admin_engine.url
    return tcp_proxy_factory(url.host or "127.0.0.1", url.port or 5432)


def redis_through(proxy: TcpProxy, redis_url: str, timeout: float = 0.5) -> redis.Redis:
    """A client with short timeouts and no retries, connected through ``proxy``."""
    return redis.Redis.from_url(
        proxy.url_for(redis_url),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def pg_connect(proxy: TcpProxy, pg_admin_engine: Engine) -> psycopg2.extensions.connection:
    url = pg_admin_engine.url
    return psycopg2.connect(
        host=proxy.host,
        port=proxy.port,
        user=url.username,
        password=url.password,
        dbname=url.database,
        connect_timeout=2,
    )


def test_url_for_keeps_credentials_and_path(redis_proxy: TcpProxy) -> None:
    proxied = redis_proxy.url_for("postgresql+psycopg2://u:p@db.example:5432/app")
    assert proxied == f"postgresql+psycopg2://u:p@127.0.0.1:{redis_proxy.port}/app"
    assert redis_proxy.url_for("redis://localhost:6379/3") == (
        f"redis://127.0.0.1:{redis_proxy.port}/3"
    )


def test_redis_passes_through(redis_proxy: TcpProxy, redis_url: str) -> None:
    client = redis_through(redis_proxy, redis_url)
    assert client.ping() is True
    client.set("proxied", "yes")
    assert client.get("proxied") == b"yes"
    client.close()


def test_redis_blackhole_times_out(redis_proxy: TcpProxy, redis_url: str) -> None:
    redis_proxy.blackhole()
    client = redis_through(redis_proxy, redis_url, timeout=0.3)
    with pytest.raises(redis.TimeoutError):
        client.ping()
    client.close()


@pytest.mark.parametrize("mode", ["reset", "refuse"])
def test_redis_reset_and_refuse_fail_fast(redis_proxy: TcpProxy, redis_url: str, mode: str) -> None:
    redis_proxy.set_mode(mode)
    client = redis_through(redis_proxy, redis_url, timeout=2)
    with pytest.raises(redis.ConnectionError) as failure:
        client.ping()
    assert not isinstance(failure.value, redis.TimeoutError)
    client.close()


def test_refuse_then_pass_listens_again_on_the_same_port(
    redis_proxy: TcpProxy, redis_url: str
) -> None:
    port = redis_proxy.port
    redis_proxy.refuse()
    redis_proxy.pass_through()
    assert redis_proxy.port == port
    assert redis_through(redis_proxy, redis_url).ping() is True


def test_delay_longer_than_the_timeout_times_out(redis_proxy: TcpProxy, redis_url: str) -> None:
    client = redis_through(redis_proxy, redis_url, timeout=0.3)
    assert client.ping() is True
    redis_proxy.delay(1.0)
    with pytest.raises(redis.TimeoutError):
        client.ping()
    client.close()


def test_short_delay_still_answers(redis_proxy: TcpProxy, redis_url: str) -> None:
    redis_proxy.delay(0.05)
    assert redis_through(redis_proxy, redis_url, timeout=5).ping() is True


def test_close_all_cuts_an_established_connection(redis_proxy: TcpProxy, redis_url: str) -> None:
    # a raw socket: redis-py would silently reconnect and hide the cut
    with socket.create_connection((redis_proxy.host, redis_proxy.port), timeout=2) as sock:
        sock.sendall(b"PING\r\n")
        assert sock.recv(64) == b"+PONG\r\n"
        assert redis_proxy.connection_count == 1
        redis_proxy.close_all()
        assert redis_proxy.connection_count == 0
        with pytest.raises(ConnectionResetError):
            sock.sendall(b"PING\r\n")
            sock.recv(64)
    assert redis_through(redis_proxy, redis_url).ping() is True


def test_postgres_passes_through(pg_proxy: TcpProxy, pg_admin_engine: Engine) -> None:
    connection = pg_connect(pg_proxy, pg_admin_engine)
    with connection.cursor() as cursor:
        cursor.execute("SELECT 40 + 2")
        assert cursor.fetchone() == (42,)
    connection.close()


@pytest.mark.parametrize("mode", ["blackhole", "reset", "refuse"])
def test_postgres_connect_fails_in_fault_modes(
    pg_proxy: TcpProxy, pg_admin_engine: Engine, mode: str
) -> None:
    pg_proxy.set_mode(mode)
    with pytest.raises(psycopg2.OperationalError):
        pg_connect(pg_proxy, pg_admin_engine)


def test_stop_ends_every_proxy_thread(redis_url: str) -> None:
    target = urlsplit(redis_url)
    with TcpProxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
        clients = [redis_through(proxy, redis_url) for _ in range(3)]
        assert all(client.ping() for client in clients)
        proxy.blackhole()
        stuck = redis_through(proxy, redis_url, timeout=0.1)
        with pytest.raises(redis.TimeoutError):
            stuck.ping()
        clients.append(stuck)
    leftovers = [t for t in threading.enumerate() if t.name.startswith("tcp-proxy")]
    assert leftovers == []
    assert proxy.connection_count == 0
    for client in clients:
        client.close()


def test_unknown_mode_is_refused(redis_proxy: TcpProxy) -> None:
    with pytest.raises(ValueError, match="unknown proxy mode"):
        redis_proxy.set_mode("flaky")
