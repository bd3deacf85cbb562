"""PostgreSQL refusing connections for real, on a database of the test's own: 503 on both
the asyncpg path (``POST /customer/data``) and the SQLAlchemy path (``GET /customer/data``),
never 500, and recovery without a restart.

The refusals are produced by the server, not simulated: ``ALLOW_CONNECTIONS false``
(SQLSTATE 55000, "database is not accepting connections", as during a restart or
maintenance), ``CONNECTION LIMIT 0`` (53300, too many connections), and terminating the
pooled backends (57P01, admin shutdown). The shared cluster is never restarted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from service.app import create_app
from service.config import Settings
from tests.reliability.probes import assert_unavailable
from tests.support.api import assert_envelope, create_tenant_through
from tests.support.outbox import wait_until


@pytest.fixture
def own_database(migrated_database_factory: Callable[[], str]) -> str:
    return migrated_database_factory()


@pytest.fixture
def database_name(own_database: str) -> str:
    name = make_url(own_database).database
    assert name
    return name


@pytest.fixture
def api(settings: Settings, own_database: str, pg_admin_engine: Engine) -> Iterator[TestClient]:
    """The app on a database of its own that the test makes refuse connections (overrides
    the shared ``api``); the database accepts connections again afterwards."""
    own = settings.updated({"database_url": own_database, "auth_cache_ttl_seconds": 600})
    with TestClient(create_app(own)) as client:
        yield client
    name = make_url(own_database).database
    with pg_admin_engine.connect() as connection:
        connection.execute(
            text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true CONNECTION LIMIT -1')
        )


@pytest.fixture
def tenant(api: TestClient, admin_headers: dict[str, str]) -> dict[str, str]:
    """The headers of a tenant of ``api``'s own database, its key cached and both pools warm
    (overrides the shared ``tenant``, which lives on the worker's database)."""
    headers: dict[str, str] = create_tenant_through(api, admin_headers, "refuse")["headers"]
    # warm: the key is cached, both pools hold a connection
    assert_envelope(api.post("/customer/data", json={"name": "warm"}, headers=headers), 201)
    assert_envelope(api.get("/customer/data", headers=headers), 200)
    return headers


def refuse(pg_admin_engine: Engine, name: str, clause: str) -> None:
    """Make the server refuse new connections to ``name`` and drop the open ones."""
    with pg_admin_engine.connect() as connection:
        connection.execute(text(f'ALTER DATABASE "{name}" {clause}'))
        connection.execute(
            text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
            {"n": name},
        )


@pytest.mark.parametrize(
    ("clause", "restore"),
    [
        ("ALLOW_CONNECTIONS false", "ALLOW_CONNECTIONS true"),  # 55000
        ("CONNECTION LIMIT 0", "CONNECTION LIMIT -1"),  # 53300
    ],
)
def test_a_database_refusing_connections_answers_503_on_both_paths(
    api: TestClient,
    tenant: dict[str, str],
    pg_admin_engine: Engine,
    database_name: str,
    clause: str,
    restore: str,
) -> None:
    refuse(pg_admin_engine, database_name, clause)

    for _ in range(2):
        assert_unavailable(api.post("/customer/data", json={"name": "x"}, headers=tenant))
        assert_unavailable(api.get("/customer/data", headers=tenant))
        assert_unavailable(api.get("/ready"))

    with pg_admin_engine.connect() as connection:
        connection.execute(text(f'ALTER DATABASE "{database_name}" {restore}'))

    def created() -> bool:
        response = api.post("/customer/data", json={"name": "back"}, headers=tenant)
        assert response.status_code in (201, 503), response.text
        return response.status_code == 201

    assert wait_until(created, timeout=30, interval=0.2)
    assert_envelope(api.get("/customer/data", headers=tenant), 200)


def test_terminated_pooled_connections_never_answer_500(
    api: TestClient, tenant: dict[str, str], pg_admin_engine: Engine, database_name: str
) -> None:
    codes = []
    for _ in range(3):
        refuse(pg_admin_engine, database_name, "CONNECTION LIMIT -1")  # 57P01 on pooled ones
        codes.append(api.post("/customer/data", json={"name": "x"}, headers=tenant).status_code)
        codes.append(api.get("/customer/data", headers=tenant).status_code)
    assert set(codes) <= {200, 201, 503}, codes
    assert_envelope(api.post("/customer/data", json={"name": "y"}, headers=tenant), 201)
