"""Secrets never reach logs, error messages or the audit trail.

A scenario exercises every path that handles a key (issue, use, wrong secret, malformed,
rotate, revoke, disable, admin mistakes, validation errors with keys in the body, the
database going away), with every logger captured at DEBUG, through the app in-process; a
second one runs ``fintegrate serve``, ``relay`` and ``consume --debug`` as processes.
Then logs, answers and ``audit_log`` are scanned for the admin key, every tenant key and
its secret part, any bcrypt hash and the services' password. A key may appear only in the
one answer that issues it (consumer creation, rotation).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from service.app import create_app
from service.config import Settings
from tests.reliability.handlers import LOG_ENV
from tests.support.names import unique_name
from tests.support.outbox import wait_until
from tests.support.processes import FintegrateProcess, serve_api
from tests.support.services import RABBIT_PASS
from tests.support.tcp_proxy import TcpProxy

BCRYPT_MARK = "$2b$"


class Recorder:
    """Answers seen by the scenario and the secrets it handled."""

    def __init__(self, admin_key: str) -> None:
        self.answers: list[str] = []
        self.issued: list[str] = []
        self.secrets: set[str] = {admin_key, RABBIT_PASS}

    def seen(self, response: httpx.Response, issues_key: bool = False) -> Any:
        body = response.json()
        if issues_key:
            key = body["data"]["api_key"]
            self.secrets |= {key, key.split("_", 2)[2]}
            self.issued.append(response.text)
        else:
            self.answers.append(response.text)
        return body["data"]

    def leaks(self, *texts: str) -> list[str]:
        """The secrets (and bcrypt hashes) found in ``texts``, shortened for the report."""
        found = [secret[:8] + "…" for secret in self.secrets if any(secret in t for t in texts)]
        return found + [BCRYPT_MARK for t in texts if BCRYPT_MARK in t][:1]


def audit_text(engine: Engine) -> str:
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT CAST(a AS text) FROM audit_log a")).scalars()
        return "\n".join(rows)


def tenant_key_paths(client: TestClient, record: Recorder, admin: dict[str, str]) -> str:
    """Issue, use, mistype, rotate, revoke and disable keys; the tenant's base path."""
    created = record.seen(
        client.post("/consumer/data", json={"name": unique_name("s")}, headers=admin), True
    )
    key, base = created["api_key"], f"/consumer/data/{created['consumer_id']}"
    tenant = {"X-API-Key": key}
    record.seen(client.post("/customer/data", json={"name": "Ann"}, headers=tenant))
    prefix = key.split("_")[1]
    for wrong in (f"fk_{prefix}_{'x' * 43}", "fk_bad", f"{key}x", key[:-1]):
        record.seen(client.get("/customer/data", headers={"X-API-Key": wrong}))
    record.seen(client.get("/customer/data", headers={"X-Admin-Key": key}))
    record.seen(client.get(base, headers={"X-Admin-Key": admin["X-Admin-Key"] + "x"}))
    record.seen(client.get("/customer/data", headers={"X-API-Key": admin["X-Admin-Key"]}))
    record.seen(client.post("/customer/data", json={"name": key, "x": key}, headers=tenant))
    record.seen(client.post("/customer/data", content=f'{{"name": "{key}', headers=tenant))
    rotated = record.seen(client.post(f"{base}/keys/rotate", headers=tenant), True)
    record.seen(client.get("/customer/data", headers=tenant))
    record.seen(client.post(f"{base}/keys/{rotated['key_id']}/revoke", headers=admin))
    fresh = record.seen(client.post(f"{base}/keys/rotate", headers=admin), True)
    record.seen(client.patch(base, json={"status": "disabled"}, headers=admin))
    record.seen(client.get("/customer/data", headers={"X-API-Key": fresh["api_key"]}))
    record.seen(client.get(f"{base}/keys", headers=admin))
    return base


@pytest.fixture
def proxied_client(db_proxied_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(db_proxied_settings)) as client:
        yield client


def test_no_secret_in_logs_answers_or_audit_rows(
    proxied_client: TestClient,
    db_proxy: TcpProxy,
    engine: Engine,
    admin_headers: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    record = Recorder(admin_headers["X-Admin-Key"])
    base = tenant_key_paths(proxied_client, record, admin_headers)
    db_proxy.refuse()
    db_proxy.close_all()
    record.seen(proxied_client.get(base, headers=admin_headers))  # 503, logged
    record.seen(proxied_client.post("/customer/data", json={}, headers={"X-API-Key": "fk_a_b"}))
    db_proxy.pass_through()

    assert len(record.secrets) == 2 + 2 * 3  # admin key, password, three keys and secrets
    assert "database unavailable" in caplog.text  # the outage was logged
    assert len(record.leaks(*record.issued)) == 6  # the scan does find keys where they are
    assert record.leaks(caplog.text) == []
    assert record.leaks(*record.answers) == []
    assert record.leaks(audit_text(engine)) == []


def test_no_secret_in_the_logs_of_serve_relay_and_a_debug_worker(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    assert isolated_settings.auth.admin_api_key
    admin = {"X-Admin-Key": isolated_settings.auth.admin_api_key}
    record = Recorder(isolated_settings.auth.admin_api_key)
    api, url = serve_api(isolated_settings, tmp_path, log_level="debug")
    processes = [api]
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            tenant = record.seen(
                client.post("/consumer/data", json={"name": unique_name("s")}, headers=admin),
                True,
            )
            worker_settings = isolated_settings.updated(
                {"api_url": url, "api_key": tenant["api_key"]}
            )
            consume = ["--debug", "consume", "--consumer", tenant["name"]]
            consume += ["--handler", "tests.reliability.handlers:record"]
            processes += [
                FintegrateProcess("relay", ["--debug", "relay"], isolated_settings, tmp_path),
                FintegrateProcess(
                    "worker", consume, worker_settings, tmp_path, {LOG_ENV: str(tmp_path / "h")}
                ),
            ]
            for process in processes[1:]:
                process.start()
            record.seen(
                client.post(
                    "/customer/data", json={"name": "A"}, headers={"X-API-Key": tenant["api_key"]}
                )
            )
            assert wait_until(lambda: (tmp_path / "h").exists(), timeout=60)
            record.seen(client.get("/customer/data", headers={"X-API-Key": "fk_x_y"}))
    finally:
        for process in processes:
            process.terminate()

    logs = [process.log_text() for process in processes]
    assert all(logs), "a process logged nothing"
    assert record.leaks(*logs) == []
    assert record.leaks(*record.answers) == []
