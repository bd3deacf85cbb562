"""The benchmark's baselines: plain FastAPI endpoints doing POST /customer/data's two inserts.

One customer row and one ``customer_creation`` event row in one transaction, on the same
tables, with no auth, no rate limit, no middleware and no envelope:

- ``create_app`` (baseline ``sqlalchemy``): the plainest FastAPI way (the FastAPI
  tutorial's): a ``def`` endpoint on a SQLAlchemy engine (psycopg2, a pool of
  ``db_pool_size``, no pre-ping), run in FastAPI's thread pool.
- ``create_async_app`` (baseline ``asyncpg``): the plainest ``async def`` endpoint on an
  asyncpg pool built by the API's own ``create_pool`` (same driver, pool and timeouts as the
  API's hot path), the two inserts in an explicit transaction.

The API's targets against them are in ``service/bench/api.py`` (``TARGETS``), which runs
them with ``uvicorn service.bench.baseline_app:create_app --factory`` and the environment
``FINTEGRATE_DATABASE_URL`` plus ``BENCH_CONSUMER_ID`` (the tenant the rows belong to).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import asyncpg
from fastapi import FastAPI
from pydantic import BaseModel
from sqlalchemy import Engine, create_engine, text

from service.config import load_settings
from service.kit.db_async import create_pool

INSERT_CUSTOMER = text(
    "INSERT INTO customers (consumer_id, name, email, status)"
    " VALUES (:consumer_id, :name, :email, :status)"
    " RETURNING customer_id, name, email, status, created_at, updated_at"
)
INSERT_EVENT = text(
    "INSERT INTO customer_events (customer_id, consumer_id, event_type, source_service,"
    " payload_json, metadata_json, publish_status)"
    " VALUES (:customer_id, :consumer_id, 'customer_creation', 'POST /customer/data',"
    " CAST(:payload AS jsonb), '{}', 'pending')"
)

ASYNC_INSERT_CUSTOMER = (
    "INSERT INTO customers (consumer_id, name, email, status) VALUES ($1, $2, $3, $4)"
    " RETURNING customer_id, name, email, status, created_at, updated_at"
)
ASYNC_INSERT_EVENT = (
    "INSERT INTO customer_events (customer_id, consumer_id, event_type, source_service,"
    " payload_json, metadata_json, publish_status)"
    " VALUES ($1, $2, 'customer_creation', 'POST /customer/data', $3::jsonb, '{}', 'pending')"
)


class CustomerIn(BaseModel):
    name: str
    email: str | None = None
    status: str = "active"


def insert_customer(engine: Engine, consumer_id: UUID, body: CustomerIn) -> dict[str, Any]:
    """Both rows in one transaction; the customer as inserted."""
    with engine.begin() as connection:
        values = {"consumer_id": consumer_id, **body.model_dump()}
        row = dict(connection.execute(INSERT_CUSTOMER, values).mappings().one())
        payload = json.dumps({**body.model_dump(), "customer_id": str(row["customer_id"])})
        connection.execute(
            INSERT_EVENT,
            {"customer_id": row["customer_id"], "consumer_id": consumer_id, "payload": payload},
        )
    return row


async def insert_customer_async(
    pool: asyncpg.Pool, consumer_id: UUID, body: CustomerIn
) -> dict[str, Any]:
    """Both rows in one transaction on an asyncpg pool; the customer as inserted."""
    async with pool.acquire() as connection, connection.transaction():
        record = await connection.fetchrow(
            ASYNC_INSERT_CUSTOMER, consumer_id, body.name, body.email, body.status
        )
        assert record is not None
        row = dict(record)
        payload = json.dumps({**body.model_dump(), "customer_id": str(row["customer_id"])})
        await connection.execute(ASYNC_INSERT_EVENT, row["customer_id"], consumer_id, payload)
    return row


def plain_app(**options: Any) -> FastAPI:
    app = FastAPI(**options)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def create_app() -> FastAPI:
    """The plain SQLAlchemy baseline for the tenant ``BENCH_CONSUMER_ID``."""
    settings = load_settings()
    size = settings.database.pool_size
    engine = create_engine(settings.database.url, pool_size=size, max_overflow=size)
    consumer_id = UUID(os.environ["BENCH_CONSUMER_ID"])
    app = plain_app()

    @app.post("/customer/data", status_code=201)
    def create_customer(body: CustomerIn) -> dict[str, Any]:
        return insert_customer(engine, consumer_id, body)

    return app


def create_async_app() -> FastAPI:
    """The plain asyncpg baseline for the tenant ``BENCH_CONSUMER_ID``."""
    consumer_id = UUID(os.environ["BENCH_CONSUMER_ID"])
    pools: list[asyncpg.Pool] = []

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        pools.append(await create_pool(load_settings().database))
        yield
        await pools[0].close()

    app = plain_app(lifespan=lifespan)

    @app.post("/customer/data", status_code=201)
    async def create_customer(body: CustomerIn) -> dict[str, Any]:
        return await insert_customer_async(pools[0], consumer_id, body)

    return app
