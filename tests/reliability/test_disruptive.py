"""PostgreSQL really stopped (``pg_ctlcluster stop``): 503 envelopes, then recovery.

Marked ``disruptive``: every other test needs this server, so scripts/test.sh runs these
alone after the parallel phase, and the cluster is started again in ``finally``. The
parallel-safe variants (refused, reset, blackholed, frozen links) are in
test_database_faults.py; RabbitMQ's real stop/start is C's disruptive test in
tests/service/messaging/publish/test_broker_outage.py.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from tests.reliability.probes import assert_unavailable, customers_without_event, report_figures
from tests.support.outbox import wait_until

PG_VERSION = (
    os.environ.get("FINTEGRATE_TEST_PG_VERSION")
    or sorted(os.listdir("/etc/postgresql"), key=lambda v: [int(p) for p in v.split(".")])[-1]
)


def pg_ctlcluster(action: str) -> None:
    command = ["pg_ctlcluster", "--skip-systemctl-redirect", PG_VERSION, "main", action]
    if action == "stop":
        command += ["-m", "fast"]
    if os.geteuid() != 0:
        command = ["sudo", "-n", *command]
    subprocess.run(command, check=True, capture_output=True, timeout=120)


@pytest.mark.disruptive
def test_postgresql_stopped_answers_503_and_the_api_recovers_by_itself(
    client: TestClient,
    create_consumer: Callable[..., Any],
    engine: Engine,
    pg_admin_engine: Engine,
) -> None:
    tenant = create_consumer()
    headers = tenant["headers"]
    assert client.post("/customer/data", json={"name": "before"}, headers=headers).is_success
    try:
        pg_ctlcluster("stop")
        started = time.monotonic()
        answers = [
            client.post("/customer/data", json={"name": "down"}, headers=headers),
            client.get("/customer/data", headers=headers),
            client.get("/ready"),
        ]
        slowest = time.monotonic() - started
    finally:
        pg_ctlcluster("start")
        pg_admin_engine.dispose()  # the session's admin pool holds connections the stop killed
    back = time.monotonic()
    assert wait_until(
        lambda: (
            client.post("/customer/data", json={"name": "after"}, headers=headers).status_code
            == 201
        ),
        timeout=60,
        interval=0.2,
    )
    recovery_seconds = time.monotonic() - back

    for response in answers:
        assert_unavailable(response)
    assert customers_without_event(engine, tenant["consumer_id"]) == (2, 0)
    report_figures(
        "postgresql_stopped",
        answers_503=len(answers),
        seconds_for_three_503=round(slowest, 2),
        recovery_seconds_after_start=round(recovery_seconds, 2),
    )
