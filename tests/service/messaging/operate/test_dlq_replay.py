"""DLQ replay puts each customer's dead letters back in sequence order, and leaves stale ones.

Dead letters are published straight to the tenant's DLQ in reverse sequence order (the
order a DLQ can end up in after retries), customers interleaved.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, text

from service.config import Settings
from service.events import repository
from service.events.archive import plan_archive, run_archive
from service.events.service import current_payloads, last_delivered_sequences
from service.kit.db_async import close_pool, create_pool, pooled_connection
from service.messaging import topology
from service.messaging.connection import open_blocking
from service.messaging.messages import event_from_row, message_body, message_properties
from service.messaging.operate.dlq import DeliveredLookup, replay_dead_letters
from service.messaging.operate.provisioning import provision_consumer_queues
from service.messaging.publish.publisher import ConfirmingPublisher, OutgoingMessage
from tests.support import history
from tests.support.api import assert_envelope, confirm_receipt
from tests.support.outbox import drain_queue, new_consumer_name, queue_depth
from tests.support.worker import Tenant, customers_with_events, interleaved_rows


def dead_letter_everything(settings: Settings, tenant: Tenant, rows: list[Any]) -> None:
    """Each row's message into the DLQ, newest sequence first."""
    messages = [
        OutgoingMessage(
            topology.dlq_routing_key(tenant["name"]),
            message_body(event_from_row(row)),
            message_properties(event_from_row(row)),
        )
        for row in sorted(rows, key=lambda r: -r.sequence)
    ]
    with ConfirmingPublisher(settings.broker.url) as publisher:
        assert all(result.ok for result in publisher.publish_batch(messages))


def lookup(engine: Engine) -> DeliveredLookup:
    def look_up(consumer_id: str, customer_ids: list[str]) -> dict[str | None, int]:
        with engine.connect() as connection:
            return last_delivered_sequences(connection, consumer_id, customer_ids)

    return look_up


def replay(settings: Settings, tenant: Tenant, last_delivered: DeliveredLookup | None) -> Any:
    connection = open_blocking(settings.broker.url)
    try:
        with ConfirmingPublisher(settings.broker.url) as publisher:
            return replay_dead_letters(
                connection.channel(), publisher, tenant["name"], 1000, last_delivered=last_delivered
            )
    finally:
        connection.close()


def queued_orders(settings: Settings, tenant: Tenant) -> tuple[dict[str, list[int]], list[Any]]:
    """Per customer, the sequences in queue order; and the messages' properties."""
    orders: dict[str, list[int]] = defaultdict(list)
    drained = drain_queue(settings.broker.url, tenant["queue_name"])
    for _, _, body in drained:
        document = json.loads(body)
        orders[document["customer_id"]].append(document["sequence"])
    return orders, [properties for _, properties, _ in drained]


def test_replay_sorts_each_customers_dead_letters_by_sequence(
    settings: Settings, engine: Engine, api: httpx.Client, tenant: Tenant
) -> None:
    customers = customers_with_events(api, tenant, customers=6, events=4)
    rows = interleaved_rows(engine, tenant)
    dead_letter_everything(settings, tenant, rows)
    outcome = replay(settings, tenant, lookup(engine))
    assert (outcome.replayed, outcome.failed, outcome.stale) == (24, 0, 0)
    orders, properties = queued_orders(settings, tenant)
    assert orders == {customer_id: [1, 2, 3, 4] for customer_id in customers}
    assert {p.headers["x-fintegrate-replayed"] for p in properties} == {True}
    assert queue_depth(settings.broker.url, topology.dlq_name(tenant["name"])) == 0


def test_stale_dead_letters_stay_in_the_dlq_and_are_listed(
    settings: Settings, engine: Engine, api: httpx.Client, tenant: Tenant
) -> None:
    delivered, untouched = customers_with_events(api, tenant, customers=2, events=4)
    rows = interleaved_rows(engine, tenant)
    by_sequence = {(str(r.customer_id), r.sequence): str(r.event_id) for r in rows}
    confirm_receipt(api, tenant, by_sequence[(delivered, 2)])  # 1 and 2 of this customer are stale
    dead_letter_everything(settings, tenant, rows)

    outcome = replay(settings, tenant, lookup(engine))
    assert (outcome.replayed, outcome.failed, outcome.stale) == (6, 0, 2)
    assert sorted(outcome.stale_event_ids) == sorted(
        [by_sequence[(delivered, 1)], by_sequence[(delivered, 2)]]
    )
    orders, _ = queued_orders(settings, tenant)
    assert orders == {delivered: [3, 4], untouched: [1, 2, 3, 4]}
    assert queue_depth(settings.broker.url, topology.dlq_name(tenant["name"])) == 2

    anyway = replay(settings, tenant, None)  # --include-stale: no check
    assert (anyway.replayed, anyway.stale) == (2, 0)
    orders, _ = queued_orders(settings, tenant)
    assert orders == {delivered: [1, 2]}


ARCHIVED_CUSTOMER = "00000000-0000-0000-0000-00000000a001"
ADD_EVENT = text(
    """
    INSERT INTO customer_events
        (consumer_id, customer_id, event_type, source_service, payload_json, created_at,
         publish_status, published_at)
    VALUES (CAST(:consumer AS uuid), CAST(:customer AS uuid), 'customer_status_change', 'test',
            '{}', now() - make_interval(days => :days), 'published', now())
    RETURNING *, CAST(:name AS text) AS consumer_name
    """
)


async def confirm_processed(settings: Settings, event_ids: list[Any]) -> None:
    """Through the receipt's own statement (what POST /events/confirm-delivery runs)."""
    pool = await create_pool(settings.database)
    try:
        async with pooled_connection(pool) as connection:
            for event_id in event_ids:
                await repository.confirm_delivery(
                    connection, event_id, history.CONSUMER, "processed", None
                )
    finally:
        await close_pool(pool)


def test_replay_after_the_events_partition_was_archived_still_leaves_stale_letters(
    settings: Settings, database_factory: Callable[[], str], tmp_path: Path
) -> None:
    engine = history.history_database(database_factory)
    name = new_consumer_name()
    provision_consumer_queues(settings, name)
    values = {"consumer": str(history.CONSUMER), "customer": ARCHIVED_CUSTOMER, "name": name}
    with engine.begin() as connection:
        old = [connection.execute(ADD_EVENT, {**values, "days": 20}).one() for _ in range(2)]
        recent = connection.execute(ADD_EVENT, {**values, "days": 0}).one()
    assert [row.sequence for row in [*old, recent]] == [1, 2, 3]
    url = engine.url.render_as_string(hide_password=False)
    asyncio.run(
        confirm_processed(settings.updated({"database_url": url}), [row.event_id for row in old])
    )
    result = run_archive(engine, plan_archive(engine, 7, tmp_path))
    assert result.dropped
    with engine.connect() as connection:
        left = connection.execute(
            text("SELECT count(*) FROM customer_events WHERE customer_id = :c"),
            {"c": ARCHIVED_CUSTOMER},
        ).scalar_one()
    assert left == 1  # the two delivered events are gone with their partition

    dead_letter_everything(settings, {"name": name}, [*old, recent])
    outcome = replay(settings, {"name": name}, lookup(engine))
    assert (outcome.replayed, outcome.failed, outcome.stale) == (1, 0, 2)
    assert sorted(outcome.stale_event_ids) == sorted(str(row.event_id) for row in old)
    orders, _ = queued_orders(settings, {"name": name, "queue_name": topology.queue_name(name)})
    assert orders == {ARCHIVED_CUSTOMER: [3]}
    engine.dispose()


def test_a_replay_sends_the_payload_the_database_holds_now(
    settings: Settings, engine: Engine, api: httpx.Client, tenant: Tenant
) -> None:
    """A letter dead-lettered with its pre-erasure payload goes back erased (issue 24)."""
    erased, kept = customers_with_events(api, tenant, customers=2, events=1)
    rows = interleaved_rows(engine, tenant)  # read before the erasure: payloads with names
    erase = api.post(f"/customer/data/{erased}/erase", headers={"X-API-Key": tenant["api_key"]})
    assert_envelope(erase, 200)
    dead_letter_everything(settings, tenant, rows)  # as if rejected after the erasure
    connection = open_blocking(settings.broker.url)
    try:
        with ConfirmingPublisher(settings.broker.url) as publisher:
            outcome = replay_dead_letters(
                connection.channel(),
                publisher,
                tenant["name"],
                10,
                current_payloads=payloads(engine),
            )
    finally:
        connection.close()
    assert outcome.replayed == 2
    sent = {
        document["customer_id"]: document
        for _, _, body in drain_queue(settings.broker.url, tenant["queue_name"])
        for document in [json.loads(body)]
    }
    assert sent[erased]["payload"] == {"erased": True}
    assert sent[kept]["payload"] == next(
        row.payload_json for row in rows if str(row.customer_id) == kept
    )


def payloads(engine: Engine) -> Any:
    def look_up(event_ids: list[str]) -> dict[str, Any]:
        with engine.connect() as connection:
            return current_payloads(connection, event_ids)

    return look_up
