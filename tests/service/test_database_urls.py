"""Database URLs as platforms hand them out work on every path, with the shipped driver.

SQLAlchemy 2.1 reads a bare ``postgresql://`` as psycopg 3, which Fintegrate does not ship;
``service.config.shipped_driver_url`` maps it (and ``postgres://``) to psycopg2. Each form
is exercised for real against PostgreSQL: the settings (from the environment), the API's
engine and asyncpg pool through the app, the relay's LISTEN connection and the CLI's
``migrate``. Any other driver is refused with one line naming the accepted forms.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import text
from typer.testing import CliRunner

from fintegrate_cli.main import app as cli_app
from service.app import create_app
from service.config import Settings, load_settings, shipped_driver_url
from service.kit.db import create_db_engine, libpq_dsn
from service.kit.db_async import close_pool, create_pool
from service.messaging.publish.relay import NOTIFY_CHANNEL, PendingNotifications
from tests.support.cli import one_error_line
from tests.support.names import unique_name

FORMS = ("postgresql", "postgres", "postgresql+psycopg2")
REFUSED = (
    "postgresql+psycopg://u:p@127.0.0.1:5432/d",
    "postgresql+asyncpg://u:p@127.0.0.1:5432/d",
    "sqlite:///fintegrate.db",
    "127.0.0.1:5432/fintegrate_db",
)


def in_form(url: str, scheme: str) -> str:
    """``url`` with its scheme replaced by ``scheme``."""
    return f"{scheme}://{url.partition('://')[2]}"


@pytest.mark.parametrize("scheme", [*FORMS, "POSTGRES"])
def test_accepted_forms_map_to_psycopg2_and_keep_the_rest(scheme: str) -> None:
    url = f"{scheme}://user:p%40ss@db.example:6543/app?sslmode=require"

    mapped = shipped_driver_url(url)

    assert mapped == "postgresql+psycopg2://user:p%40ss@db.example:6543/app?sslmode=require"
    assert libpq_dsn(url) == "postgresql://user:p%40ss@db.example:6543/app?sslmode=require"


@pytest.mark.parametrize("url", REFUSED)
def test_other_drivers_are_refused_with_one_line(url: str) -> None:
    with pytest.raises(ValidationError) as info:
        load_settings(database_url=url)

    message = info.value.errors()[0]["msg"]
    assert "\n" not in message
    assert "use postgresql://, postgres:// or postgresql+psycopg2://" in message


@pytest.mark.parametrize("scheme", FORMS)
def test_settings_from_the_environment_use_psycopg2(
    scheme: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINTEGRATE_DATABASE_URL", in_form(settings.database.url, scheme))

    loaded = load_settings(read_env_file=False)

    assert loaded.database.url == in_form(settings.database.url, "postgresql+psycopg2")
    engine = create_db_engine(loaded.database, pool_size=1)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT 1")).scalar_one() == 1
    engine.dispose()


@pytest.mark.parametrize("scheme", FORMS)
def test_the_api_writes_through_both_pools(scheme: str, settings: Settings) -> None:
    # model_copy skips the validator: the engine factory and the pool map the URL themselves.
    plain = settings.updated({"database_url": in_form(settings.database.url, scheme)})
    admin = {"X-Admin-Key": plain.auth.admin_api_key or ""}

    with TestClient(create_app(plain)) as client:
        assert client.get("/ready").json()["data"]["database"]["ok"] is True
        tenant = client.post("/consumer/data", json={"name": unique_name("url")}, headers=admin)
        assert tenant.status_code == 201, tenant.text
        key = {"X-API-Key": tenant.json()["data"]["api_key"]}
        created = client.post("/customer/data", json={"name": "Ada"}, headers=key)  # asyncpg

    assert created.status_code == 201, created.text
    assert created.json()["data"]["name"] == "Ada"


@pytest.mark.parametrize("scheme", FORMS)
def test_the_asyncpg_pool_connects(scheme: str, settings: Settings) -> None:
    plain = settings.updated({"database_url": in_form(settings.database.url, scheme)})

    async def select_one() -> int:
        pool = await create_pool(plain.database)
        try:
            value: int = await pool.fetchval("SELECT 1")
            return value
        finally:
            await close_pool(pool)

    assert asyncio.run(select_one()) == 1


@pytest.mark.parametrize("scheme", FORMS)
def test_the_relay_listen_connection_is_notified(scheme: str, settings: Settings) -> None:
    notifications = PendingNotifications(in_form(settings.database.url, scheme))
    engine = create_db_engine(settings.database, pool_size=1)
    try:
        notifications.listen()
        with engine.begin() as connection:
            connection.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))
        assert notifications.wait(5.0)
    finally:
        notifications.close()
        engine.dispose()


@pytest.mark.parametrize("scheme", FORMS)
def test_cli_migrate_accepts_the_form(
    scheme: str, database_factory: Callable[[], str], clean_env: None
) -> None:
    url = in_form(database_factory(), scheme)

    result = CliRunner().invoke(cli_app, ["--database-url", url, "migrate", "apply", "--json"])

    assert result.exit_code == 0, result.output
    status = CliRunner().invoke(
        cli_app, ["--database-url", url, "migrate", "status", "--exit-code"]
    )
    assert status.exit_code == 0, status.output


def test_cli_names_an_unsupported_driver_in_one_line(clean_env: None) -> None:
    url = "postgresql+psycopg://u:p@127.0.0.1:5432/d"

    result = CliRunner().invoke(cli_app, ["--database-url", url, "migrate", "status"])

    assert result.exit_code == 1
    line = one_error_line(result)
    assert "unsupported database URL (postgresql+psycopg://)" in line
    assert "u:p@" not in line  # the URL and its password are not echoed
