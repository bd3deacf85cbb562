"""The per-aggregate sequence: n and n+1 under concurrency, commit order, no gaps, immutable."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from tests.support.outbox import insert_consumer, new_consumer_name

INSERT = text(
    "INSERT INTO customer_events (customer_id, consumer_id, event_type, source_service, sequence)"
    " VALUES (:customer_id, :consumer_id, 'customer_status_change', 'tests', :forged)"
    " RETURNING sequence"
)
WRITERS = 16


def test_concurrent_writers_of_one_customer_get_distinct_consecutive_numbers(
    engine: Engine,
) -> None:
    consumer_id = insert_consumer(engine, new_consumer_name("seq"))
    customer_id = str(uuid.uuid4())
    sequences: list[int] = []
    start = threading.Barrier(WRITERS)

    def write() -> None:
        start.wait()
        with engine.connect() as connection:
            transaction = connection.begin()
            params = {"customer_id": customer_id, "consumer_id": consumer_id, "forged": 999}
            sequences.append(connection.execute(INSERT, params).scalar_one())
            time.sleep(random.uniform(0.0, 0.02))
            transaction.commit()

    threads = [threading.Thread(target=write) for _ in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(sequences) == list(range(1, WRITERS + 1))  # no duplicate, no gap, no forgery


@pytest.mark.parametrize("first_commits", [True, False])
def test_the_next_number_waits_for_the_previous_writer_to_commit(
    engine: Engine, first_commits: bool
) -> None:
    """Sequence order is commit order: writer B gets its number only once A has ended."""
    consumer_id = insert_consumer(engine, new_consumer_name("seq"))
    params = {"customer_id": str(uuid.uuid4()), "consumer_id": consumer_id, "forged": None}
    got: list[int] = []
    with engine.connect() as first:
        transaction = first.begin()
        assert first.execute(INSERT, params).scalar_one() == 1
        second = threading.Thread(target=lambda: got.append(_insert_committed(engine, params)))
        second.start()
        second.join(1.0)
        assert second.is_alive() and got == []  # B waits on A's counter row
        transaction.commit() if first_commits else transaction.rollback()
    second.join(30)
    assert got == [2 if first_commits else 1]


def _insert_committed(engine: Engine, params: dict[str, Any]) -> int:
    with engine.begin() as connection:
        sequence: int = connection.execute(INSERT, params).scalar_one()
        return sequence


def test_a_rolled_back_write_leaves_no_gap_and_aggregates_count_apart(engine: Engine) -> None:
    consumer_id = insert_consumer(engine, new_consumer_name("seq"))
    first, second = str(uuid.uuid4()), str(uuid.uuid4())

    def insert(customer_id: str | None, commit: bool = True) -> int:
        with engine.connect() as connection:
            transaction = connection.begin()
            params = {"customer_id": customer_id, "consumer_id": consumer_id, "forged": None}
            sequence: int = connection.execute(INSERT, params).scalar_one()
            transaction.commit() if commit else transaction.rollback()
            return sequence

    assert insert(first) == 1
    assert insert(first, commit=False) == 2
    assert insert(first) == 2
    assert insert(second) == 1
    assert insert(None) == 1  # the consumer itself is an aggregate of its own
    assert insert(None) == 2


def test_a_sequence_never_changes_once_assigned(engine: Engine) -> None:
    consumer_id = insert_consumer(engine, new_consumer_name("seq"))
    with engine.begin() as connection:
        params = {"customer_id": str(uuid.uuid4()), "consumer_id": consumer_id, "forged": None}
        connection.execute(INSERT, params)
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
        connection.execute(
            text("UPDATE customer_events SET sequence = 7 WHERE consumer_id = :c"),
            {"c": consumer_id},
        )


def test_simultaneous_api_changes_of_one_customer_get_n_and_n_plus_1(
    client: TestClient, create_consumer: Callable[..., dict[str, Any]]
) -> None:
    tenant = create_consumer()
    created = client.post("/customer/data", json={"name": "Ada"}, headers=tenant["headers"])
    customer_id = created.json()["data"]["customer_id"]
    start = threading.Barrier(6)
    statuses = ["inactive", "suspended"] * 3

    def change(status: str) -> None:
        start.wait()
        client.patch(
            f"/customer/data/{customer_id}/status",
            json={"status": status},
            headers=tenant["headers"],
        )

    threads = [threading.Thread(target=change, args=(status,)) for status in statuses]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    events = client.get(
        "/events", params={"customer_id": customer_id}, headers=tenant["headers"]
    ).json()["data"]["items"]
    sequences = sorted(event["sequence"] for event in events)
    assert sequences == list(range(1, len(events) + 1))
    assert len(events) >= 2
