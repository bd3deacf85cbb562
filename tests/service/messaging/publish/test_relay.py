"""The outbox relay on the real database and broker."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event, text

from service.config import Settings
from service.events import outbox, partitions
from service.messaging.connection import BrokerUnavailable
from service.messaging.messages import POSSIBLE_DUPLICATE_HEADER
from service.messaging.operate.provisioning import provision_consumer_queues
from service.messaging.publish.publisher import (
    ConfirmingPublisher,
    Gate,
    OutgoingMessage,
    PublishResult,
)
from service.messaging.publish.relay import (
    BacklogStatistics,
    OutboxRelay,
    PossibleDuplicates,
    publish_pending_batch,
)
from tests.support.outbox import (
    ProvisionedTenant,
    drain_queue,
    event_rows,
    insert_consumer,
    insert_events,
    joined_leases,
    new_consumer_name,
    queue_depth,
    relay_running,
    wait_until,
)
from tests.support.tcp_proxy import TcpProxy


def test_relay_publishes_pending_rows_and_marks_them(
    outbox_settings: Settings, outbox_engine: Engine, tenant: ProvisionedTenant
) -> None:
    _, consumer_id, queues = tenant
    ids = insert_events(outbox_engine, consumer_id, 25)
    relay = OutboxRelay.from_settings(
        outbox_settings, outbox_engine, threading.Event(), batch_size=10
    )
    drained = relay.drain()
    relay.close()
    assert drained.published == 25 and drained.failed == 0
    rows = event_rows(outbox_engine, ids)
    assert {row.publish_status for row in rows.values()} == {"published"}
    assert all(row.published_at is not None for row in rows.values())
    assert {row.publish_try_count for row in rows.values()} == {1}
    messages = drain_queue(outbox_settings.broker.url, queues.queue)
    assert sorted(properties.message_id for _, properties, _ in messages) == sorted(ids)


def test_unroutable_event_is_not_marked_published(
    outbox_settings: Settings, outbox_engine: Engine
) -> None:
    consumer_id = insert_consumer(outbox_engine, new_consumer_name("unprovisioned"))
    [event_id] = insert_events(outbox_engine, consumer_id, 1)
    with (
        joined_leases(outbox_engine, outbox_settings) as leases,
        ConfirmingPublisher(outbox_settings.broker.url) as publisher,
    ):
        outcome = publish_pending_batch(outbox_engine, publisher, leases, 10, max_backoff=2.0)
    assert (outcome.published, outcome.failed) == (0, 1)
    row = event_rows(outbox_engine, [event_id])[event_id]
    assert row.publish_status == "pending"
    assert row.published_at is None
    assert row.publish_try_count == 1
    assert "unroutable" in row.publish_failure_reason
    assert row.next_attempt_at > datetime.now(UTC)


def test_failure_backoff_is_capped(outbox_settings: Settings, outbox_engine: Engine) -> None:
    consumer_id = insert_consumer(outbox_engine, new_consumer_name("unprovisioned"))
    [event_id] = insert_events(outbox_engine, consumer_id, 1)
    with (
        joined_leases(outbox_engine, outbox_settings) as leases,
        ConfirmingPublisher(outbox_settings.broker.url) as publisher,
    ):
        for _ in range(6):
            with outbox_engine.begin() as connection:
                connection.exec_driver_sql(
                    "UPDATE customer_events SET next_attempt_at = now() WHERE event_id = %s",
                    (event_id,),
                )
            publish_pending_batch(outbox_engine, publisher, leases, 10, max_backoff=2.0)
    row = event_rows(outbox_engine, [event_id])[event_id]
    assert row.publish_try_count == 6
    assert row.next_attempt_at <= datetime.now(UTC) + timedelta(seconds=2.5)


def test_two_relays_split_the_partitions_and_publish_every_row_exactly_once(
    outbox_settings: Settings, outbox_engine: Engine, tenant: ProvisionedTenant
) -> None:
    _, consumer_id, queues = tenant
    stop = threading.Event()
    relays = [
        OutboxRelay.from_settings(outbox_settings, outbox_engine, stop, batch_size=25)
        for _ in range(2)
    ]
    threads = [threading.Thread(target=relay.run) for relay in relays]
    for thread in threads:
        thread.start()
    try:
        half = outbox_settings.relay.partitions // 2
        assert wait_until(
            lambda: all(len(relay.leases.tenure().tokens) == half for relay in relays), 20
        )
        mine = [set(relay.leases.tenure().tokens) for relay in relays]
        assert not mine[0] & mine[1]
        ids = insert_events(outbox_engine, consumer_id, 600)
        assert wait_until(lambda: queue_depth(outbox_settings.broker.url, queues.queue) == 600)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert all(relay.totals.published > 0 for relay in relays)
    assert sum(relay.totals.published for relay in relays) == 600
    counts = Counter(
        properties.message_id
        for _, properties, _ in drain_queue(outbox_settings.broker.url, queues.queue)
    )
    assert set(counts) == set(ids)
    assert set(counts.values()) == {1}
    assert {row.publish_try_count for row in event_rows(outbox_engine, ids).values()} == {1}


def test_broker_outage_pauses_then_publishes_everything(
    outbox_settings: Settings,
    outbox_engine: Engine,
    tenant: ProvisionedTenant,
    tcp_proxy_factory: Callable[[str, int], TcpProxy],
) -> None:
    _, consumer_id, queues = tenant
    proxy = tcp_proxy_factory("127.0.0.1", 5672)
    proxy.refuse()
    settings = outbox_settings.updated({"rabbitmq_url": proxy.url_for(outbox_settings.broker.url)})
    ids = insert_events(outbox_engine, consumer_id, 40)
    relay = OutboxRelay.from_settings(settings, outbox_engine, threading.Event(), batch_size=15)
    try:
        assert relay.cycle() is None  # broker refused: nothing claimed, nothing changed
    finally:
        relay.close()  # one thread per relay: the running one below is another
    assert {row.publish_try_count for row in event_rows(outbox_engine, ids).values()} == {0}
    with relay_running(settings, outbox_engine, batch_size=15):
        proxy.pass_through()
        assert wait_until(lambda: queue_depth(outbox_settings.broker.url, queues.queue) == 40)
    rows = event_rows(outbox_engine, ids)
    assert {row.publish_status for row in rows.values()} == {"published"}


def test_relay_wakes_on_notify_and_stops_gracefully(
    outbox_settings: Settings, outbox_engine: Engine, tenant: ProvisionedTenant
) -> None:
    _, consumer_id, queues = tenant
    settings = outbox_settings.updated({"relay_poll_seconds": 60.0})
    stop = threading.Event()
    relay = OutboxRelay.from_settings(settings, outbox_engine, stop)
    thread = threading.Thread(target=relay.run)
    thread.start()
    try:
        assert relay.idle.wait(10)
        insert_events(outbox_engine, consumer_id, 3)
        woke = wait_until(lambda: queue_depth(settings.broker.url, queues.queue) == 3, 20)
    finally:
        stop.set()
        insert_events(outbox_engine, consumer_id, 1)  # a notification ends the idle wait
        thread.join(30)
    assert woke  # well before the 60 s poll fallback
    assert not thread.is_alive()


def test_a_backlog_larger_than_a_round_goes_out_without_waiting_for_the_poll(
    outbox_settings: Settings, outbox_engine: Engine, tenant: ProvisionedTenant
) -> None:
    _, consumer_id, queues = tenant
    settings = outbox_settings.updated({"relay_poll_seconds": 60.0})
    stop = threading.Event()
    relay = OutboxRelay.from_settings(settings, outbox_engine, stop, batch_size=10)
    thread = threading.Thread(target=relay.run)
    thread.start()
    try:
        assert relay.idle.wait(10)
        with outbox_engine.begin() as connection:  # one statement: a single notification
            connection.execute(
                text(
                    "INSERT INTO customer_events (customer_id, consumer_id, event_type,"
                    " source_service, payload_json, metadata_json)"
                    " SELECT md5((n % 3)::text)::uuid, :c, 'customer_status_change', 't',"
                    " '{}', '{}' FROM generate_series(1, 60) AS n"
                ),
                {"c": consumer_id},
            )
        drained = wait_until(lambda: queue_depth(settings.broker.url, queues.queue) == 60, 30)
    finally:
        stop.set()
        insert_events(outbox_engine, consumer_id, 1)  # a notification ends the idle wait
        thread.join(30)
    assert drained  # six rounds and more, each started at once, not after the 60 s poll
    assert not thread.is_alive()


def test_a_trickle_round_reads_once_records_once_and_knows_it_read_everything(
    outbox_settings: Settings, outbox_engine: Engine, tenant: ProvisionedTenant
) -> None:
    _, consumer_id, _ = tenant
    statements: list[str] = []
    ends: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not statement.startswith("PREPARE "):  # once per session, not per round
            statements.append(statement)

    duplicates = PossibleDuplicates()
    with (
        joined_leases(outbox_engine, outbox_settings) as leases,
        ConfirmingPublisher(outbox_settings.broker.url) as publisher,
    ):
        publish_pending_batch(outbox_engine, publisher, leases, 200, 2.0, duplicates)  # takes
        insert_events(outbox_engine, consumer_id, 1)
        listeners: dict[str, Callable[..., Any]] = {
            "before_cursor_execute": count,
            "commit": lambda _conn: ends.append("commit"),
            "rollback": lambda _conn: ends.append("rollback"),
        }
        for name, listener in listeners.items():
            event.listen(outbox_engine, name, listener)
        try:
            outcome = publish_pending_batch(outbox_engine, publisher, leases, 200, 2.0, duplicates)
        finally:
            for name, listener in listeners.items():
                event.remove(outbox_engine, name, listener)
    assert outcome.published == 1 and outcome.complete  # the relay may sleep now
    # the read (hints included); the erasure fence's shared lock and its re-read of the
    # wave's payloads (one round trip of two statements: the re-read's snapshot is taken
    # after the lock); the lease fence and the marking, one statement in autocommit
    assert len(statements) == 3, statements
    assert "FOR KEY SHARE" in statements[-1] and "UPDATE customer_events" in statements[-1]
    # the read and the wave share a transaction, ended when the wave is confirmed
    assert ends[:1] == ["rollback"] and "commit" not in ends, ends


def test_the_relay_keeps_its_round_connection_and_replaces_it_when_it_dies(
    outbox_settings: Settings, outbox_engine: Engine, tenant: ProvisionedTenant
) -> None:
    _, consumer_id, _ = tenant
    relay = OutboxRelay.from_settings(outbox_settings, outbox_engine, threading.Event())
    try:
        insert_events(outbox_engine, consumer_id, 1)
        assert (first := relay.cycle()) is not None and first.published == 1
        backend = round_backend(relay)
        insert_events(outbox_engine, consumer_id, 1)
        assert (second := relay.cycle()) is not None and second.published == 1
        assert round_backend(relay) == backend  # no checkout (nor its ping) per round
        with outbox_engine.connect() as connection:
            connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
        insert_events(outbox_engine, consumer_id, 1)
        relay.stop.set()  # the pause after the failed round returns at once
        assert relay.cycle() is None  # the round found its connection dead, and dropped it
        relay.stop.clear()
        assert (again := relay.cycle()) is not None and again.published == 1
        assert round_backend(relay) != backend
    finally:
        relay.close()


def round_backend(relay: OutboxRelay) -> int:
    """The PostgreSQL backend pid of the relay's round connection (left idle)."""
    connection = relay._connections.get().work
    with connection.begin():
        return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_the_relay_does_no_history_maintenance(
    outbox_settings: Settings, outbox_engine: Engine, tenant: ProvisionedTenant
) -> None:
    _, consumer_id, _ = tenant
    insert_events(outbox_engine, consumer_id, 5)
    insert_events(outbox_engine, consumer_id, 5)

    def count_rows() -> int:
        with outbox_engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT count(*) FROM customer_event_counts "
                    "WHERE consumer_id = :c AND publish_status = 'pending'"
                ),
                {"c": consumer_id},
            )
            return int(rows.scalar_one())

    assert count_rows() == 2  # one delta row per writing statement: +5, +5
    relay = OutboxRelay.from_settings(
        outbox_settings, outbox_engine, threading.Event(), batch_size=50
    )
    relay.drain()
    relay.close()
    # `fintegrate maintain` folds the counts, not the relay: the round's one marking
    # statement adds -10 beside +5, +5 (a fold would have left two rows)
    assert count_rows() == 3


class CrashAfterSending(ConfirmingPublisher):
    """Really publishes, then loses the broker before the relay can record: a crash's effect."""

    def publish_batch(
        self, messages: Sequence[OutgoingMessage], gate: Gate | None = None
    ) -> list[PublishResult]:
        super().publish_batch(messages, gate)
        raise BrokerUnavailable("connection lost after the broker confirmed")


def duplicate_marks(url: str, queue: str) -> list[tuple[str, bool]]:
    """(event_id, carries x-fintegrate-possible-duplicate) of each message, in queue order."""
    return [
        (properties.message_id, bool((properties.headers or {}).get(POSSIBLE_DUPLICATE_HEADER)))
        for _, properties, _ in drain_queue(url, queue)
    ]


def test_only_events_that_may_have_been_sent_before_are_marked_possible_duplicates(
    outbox_settings: Settings, outbox_engine: Engine, tenant: ProvisionedTenant
) -> None:
    _, consumer_id, queues = tenant
    backlog = insert_events(outbox_engine, consumer_id, 3)  # pending when the partition is taken
    duplicates = PossibleDuplicates()
    with (
        joined_leases(outbox_engine, outbox_settings) as leases,
        ConfirmingPublisher(outbox_settings.broker.url) as publisher,
    ):
        publish_pending_batch(outbox_engine, publisher, leases, 10, 2.0, duplicates)
        fresh = insert_events(outbox_engine, consumer_id, 3)
        publish_pending_batch(outbox_engine, publisher, leases, 10, 2.0, duplicates)
    marks = duplicate_marks(outbox_settings.broker.url, queues.queue)
    assert marks == [(event_id, True) for event_id in backlog] + [(e, False) for e in fresh]


def test_events_whose_publish_was_not_recorded_go_again_marked(
    outbox_settings: Settings, outbox_engine: Engine, tenant: ProvisionedTenant
) -> None:
    _, consumer_id, queues = tenant
    duplicates = PossibleDuplicates()
    with (
        joined_leases(outbox_engine, outbox_settings) as leases,
        ConfirmingPublisher(outbox_settings.broker.url) as publisher,
        CrashAfterSending(outbox_settings.broker.url) as crashing,
    ):
        publish_pending_batch(outbox_engine, publisher, leases, 10, 2.0, duplicates)  # takes it
        ids = insert_events(outbox_engine, consumer_id, 2)
        with pytest.raises(BrokerUnavailable):
            publish_pending_batch(outbox_engine, crashing, leases, 10, 2.0, duplicates)
        assert {row.publish_status for row in event_rows(outbox_engine, ids).values()} == {
            "pending"
        }
        publish_pending_batch(outbox_engine, publisher, leases, 10, 2.0, duplicates)
        later = insert_events(outbox_engine, consumer_id, 1)
        publish_pending_batch(outbox_engine, publisher, leases, 10, 2.0, duplicates)
    marks = duplicate_marks(outbox_settings.broker.url, queues.queue)
    sent_before_the_crash = [(event_id, False) for event_id in ids]  # two customers: one wave
    assert marks == sent_before_the_crash + [(e, True) for e in ids] + [(later[0], False)]


def test_an_event_with_a_failed_attempt_is_marked(
    outbox_settings: Settings, outbox_engine: Engine
) -> None:
    name = new_consumer_name("late")
    consumer_id = insert_consumer(outbox_engine, name)
    duplicates = PossibleDuplicates()
    with (
        joined_leases(outbox_engine, outbox_settings) as leases,
        ConfirmingPublisher(outbox_settings.broker.url) as publisher,
    ):
        publish_pending_batch(outbox_engine, publisher, leases, 10, 2.0, duplicates)  # takes it
        [event_id] = insert_events(outbox_engine, consumer_id, 1)
        publish_pending_batch(outbox_engine, publisher, leases, 10, 2.0, duplicates)  # unroutable
        queues = provision_consumer_queues(outbox_settings, name)
        with outbox_engine.begin() as connection:
            connection.execute(
                text("UPDATE customer_events SET next_attempt_at = now() WHERE event_id = :id"),
                {"id": event_id},
            )
        publish_pending_batch(outbox_engine, publisher, leases, 10, 2.0, duplicates)
    assert duplicate_marks(outbox_settings.broker.url, queues.queue) == [(event_id, True)]


TIED_BACKLOG = text(
    """
    INSERT INTO customer_events (customer_id, consumer_id, event_type, source_service,
                                 payload_json, metadata_json)
    SELECT md5((n % 300)::text)::uuid, :consumer_id, 'customer_creation', 'test', '{}', '{}'
    FROM generate_series(1, 3000) AS n
    """
)


WALK_INDEX = "_consumer_id_next_attempt_at_"  # every partition's copy of the walk index
PROBE_INDEX = "_coalesce_sequence_next_attempt_at_idx"  # …of ix_customer_events_pending_aggregate
DUE_PROBE = "d"  # DUE_HEADS's alias for the "has this tenant anything due?" probe


def plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The plan's nodes, depth first."""
    return [plan, *(node for child in plan.get("Plans", []) for node in plan_nodes(child))]


def aliased(plan: dict[str, Any], alias: str) -> list[dict[str, Any]]:
    """The plan's nodes that read ``alias`` (in any partition)."""
    return [node for node in plan_nodes(plan) if node.get("Alias", "").split("_")[0] == alias]


def walks(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The plan's walks of a tenant's due heads (not the index-only skip scan over tenants,
    nor the probe for whether a tenant has anything due)."""
    return [
        node
        for node in plan_nodes(plan)
        if WALK_INDEX in node.get("Index Name", "")
        and node["Node Type"] == "Index Scan"
        and node not in aliased(plan, DUE_PROBE)
    ]


def walked_entries(plan: dict[str, Any]) -> int:
    """Rows the plan read through the relay's pending walk (every partition's copy)."""
    return sum(node["Actual Rows"] * node["Actual Loops"] for node in walks(plan))


def explain(connection: Connection, statement: Any, params: dict[str, Any]) -> dict[str, Any]:
    """EXPLAIN ANALYZE of ``statement`` in the caller's transaction (its settings apply)."""
    [plan] = connection.execute(
        text("EXPLAIN (ANALYZE, FORMAT JSON) " + statement.text), params
    ).scalar_one()
    return plan["Plan"]


def explain_due_heads(engine: Engine, settings: Settings, limit: int) -> dict[str, Any]:
    """EXPLAIN ANALYZE of the relay's DUE_HEADS over every partition, as the relay runs it:
    the generic plan of the prepared statement, under the planner hints."""
    partitions = settings.relay.partitions
    params = {
        "partitions": list(range(partitions)),
        "partition_count": partitions,
        "held": [],
        "after": None,
        "known": [],
        "known_heads": [],
    }
    with engine.begin() as connection:
        plan = outbox.PREPARED_DUE_HEADS.explain(connection, {**params, "limit": limit})
    return dict(plan["Plan"])


def refresh_statistics(engine: Engine, command: str = "VACUUM ANALYZE") -> None:
    """``command`` on customer_events, outside a transaction (VACUUM cannot run in one)."""
    with engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT").execute(
            text(f"{command} customer_events")
        )


def mark_published_by_hand(engine: Engine, event_ids: list[str]) -> None:
    with engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE customer_events SET publish_status = 'published'"
                " WHERE event_id = ANY(CAST(:ids AS uuid[]))"
            ),
            {"ids": event_ids},
        )


def test_the_walk_meets_aggregate_heads_first_when_events_tie_on_time(
    outbox_settings: Settings, outbox_engine: Engine
) -> None:
    consumer_id = insert_consumer(outbox_engine, new_consumer_name("tied"))
    partitions = outbox_settings.relay.partitions
    with outbox_engine.begin() as connection:
        connection.execute(TIED_BACKLOG, {"consumer_id": consumer_id})  # one created_at
        # A publish-and-reset round shuffles the rows' heap order, which used to break ties.
        connection.execute(
            text("UPDATE customer_events SET next_attempt_at = created_at, publish_try_count = 0")
        )
    refresh_statistics(outbox_engine, "ANALYZE")
    plan = explain_due_heads(outbox_engine, outbox_settings, 100)
    with outbox_engine.begin() as connection:
        heads = outbox.due_heads(connection, list(range(partitions)), partitions, 100)
    assert len(heads) == 100 and {head.sequence for head in heads} == {1}
    assert walked_entries(plan) == 100  # heads only, none of the 2,700 behind them


def test_the_head_probe_stays_on_the_aggregate_index_after_a_sudden_backlog(
    outbox_settings: Settings, outbox_engine: Engine, tenant: ProvisionedTenant
) -> None:
    _, consumer_id, _ = tenant
    mark_published_by_hand(outbox_engine, insert_events(outbox_engine, consumer_id, 2000))
    refresh_statistics(outbox_engine)  # statistics that saw no pending row
    insert_events(outbox_engine, consumer_id, 1000)  # one aggregate each: every one a head
    plan = explain_due_heads(outbox_engine, outbox_settings, 200)
    probes = [node for node in plan_nodes(plan) if PROBE_INDEX in node.get("Index Name", "")]
    assert plan["Actual Rows"] == 200
    assert {node["Actual Loops"] for node in walks(plan)} == {1}, walks  # one tenant's walk
    assert probes and {node["Actual Loops"] for node in probes} == {200}, probes


def test_a_tenant_s_turn_costs_one_probe_entry_whatever_its_backlog(
    outbox_settings: Settings, outbox_engine: Engine, tenant: ProvisionedTenant
) -> None:
    _, consumer_id, _ = tenant
    insert_events(outbox_engine, consumer_id, 3000)
    refresh_statistics(outbox_engine, "ANALYZE")
    plan = explain_due_heads(outbox_engine, outbox_settings, 200)
    probes = aliased(plan, DUE_PROBE)
    assert plan["Actual Rows"] == 200
    # The probe once read (and hashed) every due event of every tenant, each round: 44 ms
    # of a 15,000-event backlog's round, the whole gap to the oldest-first walk.
    assert probes and sum(node["Actual Rows"] * node["Actual Loops"] for node in probes) == 1


def test_marking_touches_only_the_partitions_of_the_rows_it_marks(
    outbox_engine: Engine, tenant: ProvisionedTenant
) -> None:
    _, consumer_id, _ = tenant
    old = insert_events(outbox_engine, consumer_id, 2, age_days=21)
    new = insert_events(outbox_engine, consumer_id, 3)
    with outbox_engine.begin() as connection:
        rows = connection.execute(
            text("SELECT * FROM customer_events WHERE event_id = ANY(CAST(:ids AS uuid[]))"),
            {"ids": new},
        ).all()
        keys = outbox.row_keys(rows)
        plan = connection.execute(text("EXPLAIN " + outbox.MARK_PUBLISHED.text), keys).scalars()
        targets = {line.split()[2] for line in plan if line.strip().startswith("Update on")}
        outbox.mark_published(connection, rows)
    assert len(targets) == 2, targets  # the parent and the one partition holding the rows
    states = {k: row.publish_status for k, row in event_rows(outbox_engine, old + new).items()}
    assert states == {**dict.fromkeys(old, "pending"), **dict.fromkeys(new, "published")}


PENDING_INDEX_TUPLES = text(
    """
    SELECT ix.reltuples FROM pg_inherits h
    JOIN pg_class ix ON ix.oid = h.inhrelid JOIN pg_index i ON i.indexrelid = ix.oid
    WHERE h.inhparent = 'ix_customer_events_pending_aggregate'::regclass
      AND i.indrelid = CAST(:partition AS regclass)
    """
)


def test_a_backlog_in_a_partition_counted_empty_gets_fresh_statistics(
    outbox_engine: Engine, tenant: ProvisionedTenant
) -> None:
    _, consumer_id, _ = tenant
    refresh_statistics(outbox_engine)  # nothing pending: the indexes counted empty
    insert_events(outbox_engine, consumer_id, 3000)
    with outbox_engine.connect() as connection:
        [stale] = partitions.uncounted_backlog(connection, 1000)  # the current span's
        counted = connection.execute(PENDING_INDEX_TUPLES, {"partition": stale}).scalar_one()
    now = [0.0]
    assert counted == 0
    # Fewer pending events than a batch: no backlog to mislead the planner, no ANALYZE.
    assert BacklogStatistics(outbox_engine, 5000, clock=lambda: now[0]).before_round() == []
    statistics = BacklogStatistics(outbox_engine, 1000, clock=lambda: now[0])
    assert statistics.before_round() == [stale]
    with outbox_engine.connect() as connection:
        assert partitions.uncounted_backlog(connection, 1000) == []
        counted = connection.execute(PENDING_INDEX_TUPLES, {"partition": stale}).scalar_one()
    assert counted > 0
    now[0] += 0.5
    assert statistics.before_round() == []  # checked at most every second


def test_the_backlog_summary_reads_the_pending_indexes_with_a_plain_scan(
    outbox_engine: Engine, tenant: ProvisionedTenant
) -> None:
    _, consumer_id, _ = tenant
    ids = insert_events(outbox_engine, consumer_id, 500)
    refresh_statistics(outbox_engine, "ANALYZE")  # statistics that count a backlog
    mark_published_by_hand(outbox_engine, ids[:490])
    with outbox_engine.begin() as connection:
        summary = outbox.pending_summary(connection)  # sets the plain scan for this transaction
        plan = explain(connection, outbox.PENDING_SUMMARY, {})
    scans = {node["Node Type"] for node in plan_nodes(plan)}
    assert summary.pending == 10
    assert "Bitmap Heap Scan" not in scans and "Seq Scan" not in scans, scans
