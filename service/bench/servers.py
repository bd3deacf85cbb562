"""What a benchmark runs on: fresh migrated databases, a seeded tenant, servers on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from service.config import shipped_driver_url
from service.consumers import service as consumers
from service.consumers.schemas import ConsumerCreate
from service.kit.db import transaction
from service.kit.request import EventOrigin
from service.migrations import runner as migrations

PG_ADMIN_ENV = "FINTEGRATE_BENCH_PG_URL"
DEFAULT_PG_ADMIN_URL = "postgresql://fintegrate_user:fintegrate_pass@127.0.0.1:5432/postgres"
NEVER_LIMITED = 1_000_000
START_TIMEOUT_SECONDS = 30.0
BIN = Path(sys.executable).parent


def admin_url() -> str:
    """Where databases are created: ``FINTEGRATE_BENCH_PG_URL`` or the local server."""
    return shipped_driver_url(os.environ.get(PG_ADMIN_ENV, DEFAULT_PG_ADMIN_URL))


@contextmanager
def fresh_database(keep: bool = False) -> Iterator[str]:
    """A new migrated database; dropped afterwards unless ``keep``."""
    admin = create_engine(admin_url(), isolation_level="AUTOCOMMIT")
    name = f"bench_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(admin_url()).set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url)
    try:
        migrations.apply(engine)
        engine.dispose()
        yield url
    finally:
        engine.dispose()
        if not keep:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def seed_tenant(database_url: str, bcrypt_rounds: int) -> tuple[str, str]:
    """A tenant whose limits never refuse; returns ``(consumer_id, api_key)``."""
    engine = create_engine(database_url)
    body = ConsumerCreate(
        name=f"bench_{uuid.uuid4().hex[:10]}",
        rate_limit_per_minute=NEVER_LIMITED,
        rate_limit_burst=NEVER_LIMITED,
    )
    with transaction(engine) as connection:
        created = consumers.create_consumer(
            connection, body, consumers.new_key(bcrypt_rounds), EventOrigin("fintegrate bench")
        )
    engine.dispose()
    return str(created.consumer_id), created.api_key


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def api_command(port: int, workers: int) -> list[str]:
    """``fintegrate serve`` on loopback."""
    return [
        str(BIN / "fintegrate"), "serve", "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(workers), "--log-level", "warning",
    ]  # fmt: skip


def baseline_command(factory: str, port: int, workers: int) -> list[str]:
    """uvicorn on a factory of ``service.bench.baseline_app``."""
    return [
        str(BIN / "uvicorn"), f"service.bench.baseline_app:{factory}", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        "--log-level", "warning",
    ]  # fmt: skip


@contextmanager
def running_server(
    command: list[str], port: int, env: dict[str, str], timeout: float = START_TIMEOUT_SECONDS
) -> Iterator[int]:
    """Starts the server, waits for ``/health``, yields its pid, stops it (SIGTERM)."""
    process = subprocess.Popen(command, env={**os.environ, **env})
    try:
        wait_healthy(port, process, timeout)
        yield process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def wait_healthy(
    port: int, process: subprocess.Popen[bytes], timeout: float = START_TIMEOUT_SECONDS
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{process.args!r} did not become healthy on port {port}")


def alternating(count: int, rounds: int) -> list[list[int]]:
    """The order of each round: forwards, then backwards, and so on."""
    return [list(range(count))[:: -1 if index % 2 else 1] for index in range(rounds)]
