"""Archiving waits for the webhook channel: a partition with a pending delivery is kept."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from service.events import archive
from tests.support.history import load_history

ENDPOINT = "00000000-0000-4000-8000-0000000000e1"
AN_ENDPOINT = text(
    "INSERT INTO webhook_endpoints (endpoint_id, consumer_id, url)"
    " VALUES (CAST(:endpoint AS uuid), gen_random_uuid(), 'https://example.invalid/hook')"
)
PENDING_DELIVERY_ON_AN_OLD_EVENT = text(
    """
    INSERT INTO webhook_deliveries
        (endpoint_id, consumer_id, event_id, event_created_at, aggregate_id, sequence)
    SELECT CAST(:endpoint AS uuid), consumer_id, event_id, created_at, customer_id, sequence
    FROM customer_events
    WHERE created_at >= :start AND created_at < :end
    ORDER BY created_at LIMIT 1
    """
)


@pytest.fixture
def history_engine(history_engine: Engine) -> Engine:
    """The shared ``history_engine`` with weeks of history loaded."""
    load_history(history_engine)
    return history_engine


def test_a_pending_webhook_delivery_keeps_its_partition(
    history_engine: Engine, tmp_path: Path
) -> None:
    before = archive.plan_archive(history_engine, 10, tmp_path)
    archivable = before.archive[0]
    with history_engine.begin() as connection:
        connection.execute(AN_ENDPOINT, {"endpoint": ENDPOINT})
        inserted = connection.execute(
            PENDING_DELIVERY_ON_AN_OLD_EVENT,
            {
                "start": archivable.first_created_at,
                "end": archivable.range_end,
                "endpoint": ENDPOINT,
            },
        ).rowcount
    assert inserted == 1
    after = archive.plan_archive(history_engine, 10, tmp_path)
    assert len(after.archive) == len(before.archive) - 1
    assert len(after.keep) == len(before.keep) + 1
    with history_engine.begin() as connection:
        connection.execute(text("UPDATE webhook_deliveries SET status = 'delivered'"))
    assert len(archive.plan_archive(history_engine, 10, tmp_path).archive) == len(before.archive)


def test_a_disabled_endpoint_holds_no_history_back(history_engine: Engine, tmp_path: Path) -> None:
    before = archive.plan_archive(history_engine, 10, tmp_path)
    archivable = before.archive[0]
    with history_engine.begin() as connection:
        connection.execute(AN_ENDPOINT, {"endpoint": ENDPOINT})
        connection.execute(
            PENDING_DELIVERY_ON_AN_OLD_EVENT,
            {
                "start": archivable.first_created_at,
                "end": archivable.range_end,
                "endpoint": ENDPOINT,
            },
        )
    assert (
        len(archive.plan_archive(history_engine, 10, tmp_path).archive) == len(before.archive) - 1
    )
    with history_engine.begin() as connection:
        connection.execute(text("UPDATE webhook_endpoints SET status = 'disabled'"))
    assert len(archive.plan_archive(history_engine, 10, tmp_path).archive) == len(before.archive)
