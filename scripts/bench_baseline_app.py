"""The benchmark's baseline: the plainest FastAPI endpoint doing POST /customer/data's two inserts.

One customer row and one ``customer_creation`` event row in one transaction, on the same
tables and with the same engine settings as the API (``create_db_engine``), but no auth,
no rate limit, no middleware and no envelope. ``scripts/bench_api.py`` runs it with

    uvicorn --app-dir scripts bench_baseline_app:create_app --factory

and the environment ``FINTEGRATE_DATABASE_URL`` plus ``BENCH_CONSUMER_ID`` (the tenant the
rows belong to).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

from fastapi import FastAPI
from pydantic import BaseModel
from sqlalchemy import Engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.config import Settings
from service.db import create_db_engine

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


def create_app() -> FastAPI:
    """The baseline app for the tenant ``BENCH_CONSUMER_ID``."""
    engine = create_db_engine(Settings())
    consumer_id = UUID(os.environ["BENCH_CONSUMER_ID"])
    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/customer/data", status_code=201)
    def create_customer(body: CustomerIn) -> dict[str, Any]:
        return insert_customer(engine, consumer_id, body)

    return app
