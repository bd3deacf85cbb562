"""Fair across tenants: one tenant's backlog does not hold back another's new events."""

from __future__ import annotations

from sqlalchemy import Engine, text

from service.config import Settings
from service.messaging.operate.provisioning import provision_consumer_queues
from service.messaging.publish.publisher import ConfirmingPublisher
from service.messaging.publish.relay import PossibleDuplicates, publish_pending_batch
from service.messaging.publish.tenants import TenantTurns
from tests.support.outbox import (
    ProvisionedTenant,
    event_rows,
    insert_consumer,
    insert_events,
    joined_leases,
    new_consumer_name,
    queue_depth,
)

BACKLOG = 3000
BATCH = 100
PENDING = text(
    "SELECT count(*) FROM customer_events WHERE consumer_id = :c AND publish_status = 'pending'"
)


def provisioned_tenant(settings: Settings, engine: Engine, prefix: str) -> tuple[str, str]:
    """(consumer_id, queue) of a new tenant with its queues provisioned."""
    name = new_consumer_name(prefix)
    consumer_id = insert_consumer(engine, name)
    return consumer_id, provision_consumer_queues(settings, name).queue


def pending_of(engine: Engine, consumer_id: str) -> int:
    with engine.connect() as connection:
        return int(connection.execute(PENDING, {"c": consumer_id}).scalar_one())


def test_a_quiet_tenant_is_published_in_the_first_round_beside_a_large_backlog(
    outbox_settings: Settings, outbox_engine: Engine, tenant: ProvisionedTenant
) -> None:
    _, loud, loud_queues = tenant
    loud_queue = loud_queues.queue
    quiet, quiet_queue = provisioned_tenant(outbox_settings, outbox_engine, "quiet")
    insert_events(outbox_engine, loud, BACKLOG)  # older than anything the quiet one writes
    quiet_ids = insert_events(outbox_engine, quiet, 5)
    turns, duplicates = TenantTurns(), PossibleDuplicates()
    with (
        joined_leases(outbox_engine, outbox_settings) as leases,
        ConfirmingPublisher(outbox_settings.broker.url) as publisher,
    ):
        first = publish_pending_batch(
            outbox_engine, publisher, leases, BATCH, 2.0, duplicates, turns
        )
        rows = event_rows(outbox_engine, quiet_ids)
        assert {row.publish_status for row in rows.values()} == {"published"}
        assert queue_depth(outbox_settings.broker.url, quiet_queue) == 5
        # the share the quiet tenant left went to the loud one: a full batch all the same
        assert first.published == BATCH
        assert pending_of(outbox_engine, loud) == BACKLOG - (BATCH - 5)
        later = insert_events(outbox_engine, quiet, 3)
        publish_pending_batch(outbox_engine, publisher, leases, BATCH, 2.0, duplicates, turns)
    rows = event_rows(outbox_engine, later)
    assert {row.publish_status for row in rows.values()} == {"published"}
    assert pending_of(outbox_engine, loud) > BACKLOG - 3 * BATCH  # still draining
    assert queue_depth(outbox_settings.broker.url, loud_queue) == BACKLOG - pending_of(
        outbox_engine, loud
    )


def test_more_tenants_than_the_batch_take_turns(
    outbox_settings: Settings, outbox_engine: Engine
) -> None:
    tenants = [provisioned_tenant(outbox_settings, outbox_engine, "turn") for _ in range(3)]
    for consumer_id, _ in tenants:
        insert_events(outbox_engine, consumer_id, 4)
    turns, duplicates = TenantTurns(), PossibleDuplicates()
    served: list[set[str]] = []
    with (
        joined_leases(outbox_engine, outbox_settings) as leases,
        ConfirmingPublisher(outbox_settings.broker.url) as publisher,
    ):
        for _ in range(3):
            before = {c: pending_of(outbox_engine, c) for c, _ in tenants}
            outcome = publish_pending_batch(
                outbox_engine, publisher, leases, 2, 2.0, duplicates, turns
            )
            assert outcome.published == 2
            served.append({c for c, _ in tenants if pending_of(outbox_engine, c) < before[c]})
    assert all(len(round_served) == 2 for round_served in served)  # one head each, two tenants
    assert served[0] | served[1] == {c for c, _ in tenants}  # nobody waits a third round
    assert served[1] != served[0] and served[2] != served[1]


def test_tenants_whose_events_all_wait_for_a_retry_take_no_turn(
    outbox_settings: Settings, outbox_engine: Engine, tenant: ProvisionedTenant
) -> None:
    _, due, due_queues = tenant
    waiting = [provisioned_tenant(outbox_settings, outbox_engine, "wait")[0] for _ in range(3)]
    for consumer_id in waiting:  # pending, but not due for an hour (a publish failed)
        insert_events(outbox_engine, consumer_id, 2)
        with outbox_engine.begin() as connection:
            connection.execute(
                text(
                    "UPDATE customer_events SET next_attempt_at = now() + interval '1 hour'"
                    " WHERE consumer_id = :c"
                ),
                {"c": consumer_id},
            )
    ids = insert_events(outbox_engine, due, 3)
    turns, duplicates = TenantTurns(), PossibleDuplicates()
    with (
        joined_leases(outbox_engine, outbox_settings) as leases,
        ConfirmingPublisher(outbox_settings.broker.url) as publisher,
    ):
        # a batch of 1: before, the one turn went to a waiting tenant and the round read nothing
        first = publish_pending_batch(outbox_engine, publisher, leases, 1, 2.0, duplicates, turns)
    assert first.claimed == 1
    assert (
        sum(row.publish_status == "published" for row in event_rows(outbox_engine, ids).values())
        == 1
    )
    assert queue_depth(outbox_settings.broker.url, due_queues.queue) == 1
