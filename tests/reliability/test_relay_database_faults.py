"""``fintegrate relay`` with PostgreSQL frozen under its open connections.

The relay reaches its database through a loopback proxy that is switched to blackhole
(accepts, never answers: a frozen server or a partition that still acknowledges TCP).
The relay must give up on the silent connection within the statement timeout plus a
margin, say so, back off, and publish again once the database answers; before the bound
existed it blocked in libpq for as long as the silence lasted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from service.config import Settings
from service.kit.db import SILENCE_MARGIN_SECONDS
from tests.reliability.probes import publish_states, report_figures
from tests.support.outbox import insert_events, wait_until
from tests.support.processes import FintegrateProcess
from tests.support.tcp_proxy import TcpProxy

STATEMENT_TIMEOUT_MS = 1000
GAVE_UP = "did not answer within"


@pytest.fixture
def stack_settings(isolated_settings: Settings) -> Settings:
    return isolated_settings.updated({"db_statement_timeout_ms": STATEMENT_TIMEOUT_MS})


def all_published(engine: Engine, tenant: dict[str, Any]) -> Callable[[], bool]:
    return lambda: set(publish_states(engine, tenant["consumer_id"])) == {"published"}


def test_relay_gives_up_on_a_frozen_database_within_a_bound_and_resumes(
    stack_settings: Settings,
    stack_engine: Engine,
    tenant: dict[str, Any],
    db_proxy: TcpProxy,
    tmp_path: Path,
) -> None:
    proxied = stack_settings.updated(
        {"database_url": db_proxy.url_for(stack_settings.database.url)}
    )
    relay = FintegrateProcess("relay", ["relay", "--poll-seconds", "0.2"], proxied, tmp_path)
    relay.start()
    try:
        relay.wait_for_log("relay started")
        assert wait_until(all_published(stack_engine, tenant), timeout=30)

        db_proxy.blackhole()  # established connections go silent, new ones never answer
        frozen_at = time.monotonic()
        insert_events(stack_engine, tenant["consumer_id"], count=3)
        bound = STATEMENT_TIMEOUT_MS / 1000 + SILENCE_MARGIN_SECONDS
        relay.wait_for_log(GAVE_UP, timeout=bound + 10)
        gave_up_after = time.monotonic() - frozen_at

        db_proxy.pass_through()
        thawed_at = time.monotonic()
        assert wait_until(all_published(stack_engine, tenant), timeout=60), relay.log_text()
        resumed_after = time.monotonic() - thawed_at
    finally:
        assert relay.terminate() == 0, relay.log_text()[-2000:]

    assert relay.alive is False
    report_figures(
        "relay_database_frozen",
        gave_up_after_seconds=round(gave_up_after, 2),
        published_again_after_seconds=round(resumed_after, 2),
    )
