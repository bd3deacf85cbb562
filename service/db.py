"""Database engine construction and transaction scope."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, create_engine

from service.config import Settings


def create_db_engine(settings: Settings, *, pool_size: int | None = None) -> Engine:
    """An engine with a fixed-size pool, pre-ping and a server-side statement timeout."""
    size = pool_size or settings.db_pool_size
    return create_engine(
        settings.database_url,
        pool_size=size,
        max_overflow=size,
        pool_pre_ping=True,
        pool_timeout=5,
        connect_args={
            "connect_timeout": 3,
            "options": f"-c statement_timeout={settings.db_statement_timeout_ms}",
            "application_name": "fintegrate",
        },
    )


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """A connection inside one transaction: committed on success, rolled back on error."""
    with engine.begin() as connection:
        yield connection
