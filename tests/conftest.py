"""Shared fixtures: real PostgreSQL, RabbitMQ and Redis, isolated per test session and test.

- PostgreSQL: one fresh database per pytest worker with every migration applied
  (``migrated_database_url``); tests that need an empty one use ``database_factory``.
- RabbitMQ: one fresh vhost per pytest worker (``rabbit_vhost``), deleted at the end.
- Redis: one DB index per worker, flushed before each test (``redis_url``).
A missing service fails the test loudly; nothing is skipped.

The API fixtures every folder shares (``app``, ``client``, ``tenant``, ``api``, …) are in
tests/support/api_fixtures.py, loaded as a plugin. Helpers that tests import live in
tests/support; no module imports a test module or a conftest (tests/test_house.py).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from service.app import create_app
from service.config import Settings, get_settings, load_settings
from service.migrations import runner as migrations
from tests.support.history import history_database
from tests.support.live_server import LiveServer
from tests.support.services import (
    HELP,
    PG_ADMIN_URL,
    RABBIT_HOST,
    RABBIT_MANAGEMENT,
    RABBIT_PASS,
    RABBIT_USER,
    REDIS_BASE_URL,
    engine_on,
    worker_index,
)
from tests.support.tcp_proxy import TcpProxy

DISRUPTIVE_ENV = "FINTEGRATE_TEST_DISRUPTIVE"

# The API fixtures (app, client, admin_headers, tenant, api, ...) for every folder.
pytest_plugins = ("tests.support.api_fixtures",)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that stop shared services run only when asked (scripts/test.sh asks).

    Pointing pytest at a folder would otherwise stop RabbitMQ or PostgreSQL under every
    other test run on the machine. Deselected loudly, never skipped silently.
    """
    if os.environ.get(DISRUPTIVE_ENV) == "1":
        return
    disruptive = [item for item in items if item.get_closest_marker("disruptive")]
    if not disruptive:
        return
    items[:] = [item for item in items if not item.get_closest_marker("disruptive")]
    config.hook.pytest_deselected(items=disruptive)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"{len(disruptive)} disruptive test(s) deselected: they stop shared services; "
            f"set {DISRUPTIVE_ENV}=1 (scripts/test.sh does) to run them"
        )


@pytest.fixture(scope="session")
def pg_admin_engine() -> Iterator[Engine]:
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        pytest.fail(f"PostgreSQL is required at {PG_ADMIN_URL}: {exc}; {HELP}", pytrace=False)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def database_factory(pg_admin_engine: Engine) -> Iterator[Callable[[], str]]:
    """Creates empty databases on demand and drops them at the end of the session."""
    created: list[str] = []

    def create() -> str:
        name = f"ft_{uuid.uuid4().hex[:12]}"
        with pg_admin_engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)

    yield create
    with pg_admin_engine.connect() as connection:
        for name in created:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def migrated_database_factory(database_factory: Callable[[], str]) -> Callable[[], str]:
    """Creates databases with every migration applied on demand; returns the URL."""

    def create() -> str:
        url = database_factory()
        engine = create_engine(url)
        migrations.apply(engine)
        engine.dispose()
        return url

    return create


@pytest.fixture(scope="session")
def migrated_database_url(migrated_database_factory: Callable[[], str]) -> str:
    """One database per worker with every migration applied."""
    return migrated_database_factory()


@pytest.fixture(scope="session")
def rabbit_vhost() -> Iterator[str]:
    """A fresh RabbitMQ vhost for this worker; yields its AMQP URL."""
    vhost = f"ft_{uuid.uuid4().hex[:12]}"
    auth = (RABBIT_USER, RABBIT_PASS)
    try:
        httpx.put(
            f"{RABBIT_MANAGEMENT}/api/vhosts/{vhost}", auth=auth, timeout=10
        ).raise_for_status()
        httpx.put(
            f"{RABBIT_MANAGEMENT}/api/permissions/{vhost}/{RABBIT_USER}",
            json={"configure": ".*", "write": ".*", "read": ".*"},
            auth=auth,
            timeout=10,
        ).raise_for_status()
    except httpx.HTTPError as exc:
        pytest.fail(
            f"RabbitMQ management API is required at {RABBIT_MANAGEMENT}: {exc}; {HELP}",
            pytrace=False,
        )
    yield f"amqp://{RABBIT_USER}:{RABBIT_PASS}@{RABBIT_HOST}:5672/{vhost}"
    httpx.delete(f"{RABBIT_MANAGEMENT}/api/vhosts/{vhost}", auth=auth, timeout=30)
    delete_tenant_users(vhost, auth)


def delete_tenant_users(vhost: str, auth: tuple[str, str]) -> None:
    """Remove the broker users the session's consumers got (users are broker-wide)."""
    users = httpx.get(f"{RABBIT_MANAGEMENT}/api/users", auth=auth, timeout=30).json()
    for user in users:
        if user["name"].endswith(f".{vhost}"):
            httpx.delete(f"{RABBIT_MANAGEMENT}/api/users/{user['name']}", auth=auth, timeout=30)


@pytest.fixture
def redis_url(request: pytest.FixtureRequest) -> str:
    """This worker's own Redis DB index (1..15), flushed before the test."""
    index = 1 + worker_index(request.config) % 15
    url = f"{REDIS_BASE_URL}/{index}"
    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        client.flushdb()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is required at {REDIS_BASE_URL}: {exc}; {HELP}", pytrace=False)
    finally:
        client.close()
    return url


@pytest.fixture
def settings(migrated_database_url: str, rabbit_vhost: str, redis_url: str) -> Iterator[Settings]:
    """Settings pointing at this worker's database, vhost and Redis DB, with fast bcrypt.

    Redis gets 0.5 s instead of the product's 50 ms budget: on two cores running the
    parallel suite a healthy Redis can answer later than 50 ms, and a limit test would then
    see the check fail open. Tests about the budget itself set it back
    (tests/service/test_ratelimit.py, tests/reliability/test_redis_faults.py).
    """
    vhost = rabbit_vhost.rsplit("/", 1)[1]
    values = load_settings(
        environment="test",
        database_url=migrated_database_url,
        rabbitmq_url=rabbit_vhost,
        rabbitmq_management_url=f"http://{RABBIT_USER}:{RABBIT_PASS}@{RABBIT_HOST}:15672",
        redis_url=redis_url,
        admin_api_key=f"admin-{uuid.uuid4().hex}",
        bcrypt_rounds=4,
        relay_poll_seconds=0.2,
        redis_timeout_seconds=0.5,
    )
    assert values.broker.url.endswith(vhost)
    get_settings.cache_clear()
    yield values
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def engine(migrated_database_url: str) -> Iterator[Engine]:
    """An engine on this worker's migrated database."""
    db_engine = engine_on(migrated_database_url)
    yield db_engine
    db_engine.dispose()


@pytest.fixture
def history_engine(database_factory: Callable[[], str]) -> Iterator[Engine]:
    """A database of the test's own, migrated, with weekly partitions weeks back (the
    history tests drop and create partitions)."""
    engine = history_database(database_factory)
    yield engine
    engine.dispose()


@pytest.fixture
def tcp_proxy_factory() -> Iterator[Callable[[str, int], TcpProxy]]:
    """Starts loopback TCP proxies for fault injection (``TcpProxy(host, port)``); stops them."""
    proxies: list[TcpProxy] = []

    def create(target_host: str, target_port: int) -> TcpProxy:
        proxy = TcpProxy(target_host, target_port).start()
        proxies.append(proxy)
        return proxy

    yield create
    for proxy in proxies:
        proxy.stop()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No FINTEGRATE_* variable and no ./.env of the developer leaks into the test."""
    for key in list(os.environ):
        if key.upper().startswith("FINTEGRATE_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def live_server(settings: Settings) -> Iterator[str]:
    """The API (``create_app(settings)``) served by uvicorn on loopback; yields its base URL."""
    server = LiveServer(create_app(settings)).start()
    yield server.url
    server.stop()
