"""delivered_sequences: backfilled from the events already delivered by its migration."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from sqlalchemy import create_engine, text

from service.migrations import runner as migrations

BEFORE = "20261202_1610"
ADD_EVENT = text(
    """
    INSERT INTO customer_events (consumer_id, customer_id, event_type, source_service,
                                 payload_json)
    VALUES (:consumer, :customer, :event_type, 'test', '{}')
    RETURNING event_id, sequence
    """
)
DELIVER = text(
    "UPDATE customer_events SET deliver_status = :status, delivered_at = now() "
    "WHERE event_id = :event_id"
)
ROWS = text(
    "SELECT aggregate_id, sequence, event_id FROM delivered_sequences WHERE consumer_id = :c"
)


def test_the_migration_backfills_the_highest_delivered_sequence_per_aggregate(
    database_factory: Callable[[], str],
) -> None:
    engine = create_engine(database_factory())
    migrations.apply(engine, to_version=BEFORE)
    consumer, first, second, untouched = (uuid.uuid4() for _ in range(4))
    with engine.begin() as connection:

        def add(customer: uuid.UUID | None, event_type: str = "customer_status_change") -> str:
            row = connection.execute(
                ADD_EVENT, {"consumer": consumer, "customer": customer, "event_type": event_type}
            ).one()
            return str(row.event_id)

        first_events = [add(first) for _ in range(3)]
        second_events = [add(second) for _ in range(2)]
        add(untouched)
        own = add(None, "consumer_created")
        for event_id, status in [
            (first_events[0], "delivered"),
            (first_events[1], "delivered"),
            (first_events[2], "failed"),  # not delivered: the highest stays 2
            (second_events[0], "delivered"),
            (own, "delivered"),
        ]:
            connection.execute(DELIVER, {"event_id": event_id, "status": status})
    migrations.apply(engine)
    with engine.connect() as connection:
        rows = {row.aggregate_id: row for row in connection.execute(ROWS, {"c": consumer})}
    engine.dispose()
    assert {key: (row.sequence, str(row.event_id)) for key, row in rows.items()} == {
        first: (2, first_events[1]),
        second: (1, second_events[0]),
        consumer: (1, own),
    }
