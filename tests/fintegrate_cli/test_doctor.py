"""`fintegrate doctor` on real services: healthy, warnings, and each dependency down."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pika
import pytest
from sqlalchemy import create_engine, text

from service.config import Settings
from service.events import partitions
from service.kit.db import create_db_engine
from service.messaging import topology
from service.messaging.operate.provisioning import provision_consumer_queues
from service.messaging.publish.relay import OutboxRelay
from tests.support.cli import RunCli, one_error_line
from tests.support.names import unique_name
from tests.support.outbox import relay_running
from tests.support.ports import closed_port
from tests.support.tcp_proxy import TcpProxy


@pytest.fixture
def fresh_db(
    migrated_database_factory: Callable[[], str],
    api_env: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> str:
    """A migrated database of its own for doctor (no other test's consumers or events)."""
    url = migrated_database_factory()
    monkeypatch.setenv("FINTEGRATE_DATABASE_URL", url)
    return url


def add_consumer(database_url: str, name: str) -> None:
    engine = create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO consumers (name) VALUES (:name)"), {"name": name})
    engine.dispose()


def add_old_pending_event(database_url: str) -> None:
    engine = create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO customer_events (consumer_id, event_type, source_service, created_at)"
                " VALUES (gen_random_uuid(), 'consumer_created', 'test', now() - interval '5 min')"
            )
        )
    engine.dispose()


def add_slow_delivery(database_url: str, seconds: int) -> None:
    """One event delivered now, ``seconds`` after it was created (its receipt too)."""
    engine = create_engine(database_url)
    with engine.begin() as connection:
        event_id = connection.execute(
            text(
                "INSERT INTO customer_events (consumer_id, event_type, source_service, created_at)"
                " VALUES (gen_random_uuid(), 'consumer_created', 'test',"
                " now() - make_interval(secs => :s)) RETURNING event_id"
            ),
            {"s": seconds},
        ).scalar_one()
        connection.execute(
            text(
                "INSERT INTO consumer_event_receipts (event_id, consumer_id, status)"
                " SELECT event_id, consumer_id, 'processed' FROM customer_events"
                " WHERE event_id = :e"
            ),
            {"e": event_id},
        )
        connection.execute(
            text(
                "UPDATE customer_events SET publish_status = 'published', published_at = now(),"
                " deliver_status = 'delivered', delivered_at = now() WHERE event_id = :e"
            ),
            {"e": event_id},
        )
    engine.dispose()


def dead_letter(settings: Settings, name: str) -> None:
    """Publish one message straight to the tenant's DLQ routing key."""
    connection = pika.BlockingConnection(pika.URLParameters(settings.broker.url))
    try:
        channel = connection.channel()
        channel.basic_publish(topology.EXCHANGE, topology.dlq_routing_key(name), b"{}")
    finally:
        connection.close()


def doctor_json(run_cli: RunCli, *args: str) -> tuple[int, dict[str, dict[str, object]], str]:
    result = run_cli(*args, "doctor", "--json")
    checks = {check["name"]: check for check in json.loads(result.stdout)}
    for check in checks.values():
        assert check["status"] in ("ok", "warn", "fail")
        assert check["detail"]
        assert check["status"] == "ok" or check["hint"]
    return result.exit_code, checks, one_error_line(result) if result.exit_code else ""


def test_database_down_fails_with_exit_1(run_cli: RunCli, service_env: Settings) -> None:
    dead_db = f"postgresql+psycopg2://fintegrate_user:x@127.0.0.1:{closed_port()}/nope"
    code, checks, error = doctor_json(run_cli, "--database-url", dead_db)
    assert code == 1
    assert checks["database"]["status"] == "fail"
    assert "FINTEGRATE_DATABASE_URL" in str(checks["database"]["hint"])
    assert "migrations" not in checks  # nothing that needs the database is claimed
    assert "database" in error


def test_broker_down_fails_with_exit_1(run_cli: RunCli, service_env: Settings) -> None:
    dead_broker = f"amqp://fintegrate_user:fintegrate_pass@127.0.0.1:{closed_port()}/x"
    code, checks, error = doctor_json(run_cli, "--rabbitmq-url", dead_broker)
    assert code == 1
    assert checks["database"]["status"] == "ok"
    assert checks["migrations"]["status"] == "ok"
    assert checks["rabbitmq"]["status"] == "fail"
    assert "FINTEGRATE_RABBITMQ_URL" in str(checks["rabbitmq"]["hint"])
    assert "rabbitmq" in error


def test_redis_down_is_only_a_warning(
    run_cli: RunCli, service_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINTEGRATE_REDIS_URL", f"redis://127.0.0.1:{closed_port()}/0")
    code, checks, _ = doctor_json(run_cli)
    assert checks["redis"]["status"] == "warn"
    assert "limits on its own" in str(checks["redis"]["detail"])
    assert code in (1, 3)  # the API may also be absent here; never 0 with a warning


def test_table_for_people(run_cli: RunCli, service_env: Settings) -> None:
    result = run_cli("--api-url", f"http://127.0.0.1:{closed_port()}", "doctor")
    assert "fintegrate doctor" in result.stdout
    assert "database" in result.stdout
    assert result.exit_code == 1
    assert "api" in one_error_line(result)


@pytest.fixture
def running_relay(fresh_db: str, api_env: Settings) -> Iterator[OutboxRelay]:
    settings = api_env.updated({"database_url": fresh_db})
    engine = create_db_engine(settings.database, pool_size=2)
    with relay_running(settings, engine) as relay:
        assert relay.idle.wait(20)
        yield relay
    engine.dispose()


def test_healthy_setup_exits_0(
    run_cli: RunCli, fresh_db: str, api_env: Settings, running_relay: OutboxRelay
) -> None:
    name = unique_name("doc")
    provision_consumer_queues(api_env, name)  # also declares the exchange
    add_consumer(fresh_db, name)
    code, checks, _ = doctor_json(run_cli)
    assert {n: c["status"] for n, c in checks.items()} == {
        name: "ok"
        for name in (
            "database", "migrations", "outbox", "delivery", "relays", "history",
            "rabbitmq", "topology", "dead letters", "redis", "api", "gateway",
        )
    }  # fmt: skip
    assert code == 0
    assert "1 live relay(s), 16/16 partitions leased" in str(checks["relays"]["detail"])
    assert "1 consumer(s) match" in str(checks["topology"]["detail"])


def test_missing_queues_fail_with_the_provision_hint(
    run_cli: RunCli, fresh_db: str, api_env: Settings
) -> None:
    provision_consumer_queues(api_env, unique_name("doc"))
    ghost = unique_name("ghost")
    add_consumer(fresh_db, ghost)
    code, checks, error = doctor_json(run_cli)
    assert code == 1
    assert checks["topology"]["status"] == "fail"
    assert topology.queue_name(ghost) in str(checks["topology"]["detail"])
    assert f"fintegrate queues provision {ghost}" in str(checks["topology"]["hint"])
    assert "topology" in error


def test_a_queue_with_old_arguments_or_half_migrated_fails_with_the_migrate_hint(
    run_cli: RunCli, fresh_db: str, api_env: Settings
) -> None:
    name = unique_name("doc")
    queue = topology.queue_name(name)
    add_consumer(fresh_db, name)
    provision_consumer_queues(api_env.updated({"queue_max_length": 50}), name)
    code, checks, _ = doctor_json(run_cli)
    assert code == 1 and checks["topology"]["status"] == "fail"
    assert f"{queue} x-max-length=50 (want 100000)" in str(checks["topology"]["detail"])
    assert f"fintegrate queues provision {name} --migrate" in str(checks["topology"]["hint"])

    connection = pika.BlockingConnection(pika.URLParameters(api_env.broker.url))
    connection.channel().queue_declare(topology.migration_inbox_name(queue), durable=True)
    connection.close()
    code, checks, _ = doctor_json(run_cli)
    assert "unfinished migration" in str(checks["topology"]["detail"])
    assert "to finish it" in str(checks["topology"]["hint"])


def test_dead_letters_and_old_backlog_are_warnings_exit_3(
    run_cli: RunCli, fresh_db: str, api_env: Settings
) -> None:
    name = unique_name("doc")
    provision_consumer_queues(api_env, name)
    add_consumer(fresh_db, name)
    dead_letter(api_env, name)
    add_old_pending_event(fresh_db)
    code, checks, error = doctor_json(run_cli)
    assert checks["dead letters"]["status"] == "warn"
    assert f"{name}: 1" in str(checks["dead letters"]["detail"])
    assert checks["outbox"]["status"] == "warn"
    assert "1 pending" in str(checks["outbox"]["detail"])
    assert "relay" in str(checks["outbox"]["hint"])
    assert checks["relays"]["status"] == "warn"  # and nothing publishes them
    assert checks["delivery"]["status"] == "ok"
    assert "no event delivered in the last 5 min" in str(checks["delivery"]["detail"])
    assert "fintegrate relay" in str(checks["relays"]["hint"])
    assert code == 3
    assert error.startswith("Error: doctor: 3 warning(s)")


def test_a_dlq_at_its_bound_is_named_full(
    run_cli: RunCli, fresh_db: str, api_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINTEGRATE_DLQ_MAX_LENGTH", "2")
    name = unique_name("doc")
    provision_consumer_queues(api_env.updated({"dlq_max_length": 2}), name)
    add_consumer(fresh_db, name)
    for _ in range(3):
        dead_letter(api_env, name)
    _, checks, _ = doctor_json(run_cli)
    assert checks["topology"]["status"] == "ok"  # the DLQ is declared with the bound
    detail = str(checks["dead letters"]["detail"])
    assert f"{name}: 2 (full: its oldest are being dropped)" in detail


def test_silent_database_and_broker_do_not_hang_doctor(
    run_cli: RunCli, service_env: Settings, tcp_proxy_factory: Callable[[str, int], TcpProxy]
) -> None:
    database = tcp_proxy_factory("127.0.0.1", 5432)
    broker = tcp_proxy_factory("127.0.0.1", 5672)
    database.blackhole()
    broker.blackhole()
    code, checks, error = doctor_json(
        run_cli,
        "--database-url",
        database.url_for(service_env.database.url),
        "--rabbitmq-url",
        broker.url_for(service_env.broker.url),
    )
    assert code == 1
    assert checks["database"]["status"] == "fail"
    assert checks["rabbitmq"]["status"] == "fail"
    assert "database" in error and "rabbitmq" in error


def test_a_partition_an_archive_left_frozen_is_a_warning_maintain_repairs(
    run_cli: RunCli, fresh_db: str, api_env: Settings
) -> None:
    engine = create_engine(fresh_db)
    with engine.begin() as connection:
        connection.execute(
            text(
                "SELECT fintegrate_create_event_partition("
                "now() - interval '70 days', now() - interval '63 days')"
            )
        )
        name = connection.execute(
            text("SELECT min(relname) FROM pg_class WHERE relname LIKE 'customer_events_p%'")
        ).scalar_one()
        partitions.freeze(connection, name)
    code, checks, _ = doctor_json(run_cli)
    assert checks["history"]["status"] == "warn" and f"{name} frozen" in str(
        checks["history"]["detail"]
    )
    assert "fintegrate maintain" in str(checks["history"]["hint"])
    assert code == 3
    repaired = run_cli("maintain", "--once")
    assert repaired.exit_code == 0, repaired.stderr
    _, after, _ = doctor_json(run_cli)
    assert after["history"]["status"] == "ok"
    engine.dispose()


def test_slow_recent_deliveries_are_a_warning(
    run_cli: RunCli, fresh_db: str, api_env: Settings
) -> None:
    add_slow_delivery(fresh_db, 30)
    _, checks, _ = doctor_json(run_cli)
    delivery = checks["delivery"]
    assert delivery["status"] == "warn"
    assert "p99 30." in str(delivery["detail"]) and "1 delivered" in str(delivery["detail"])


def test_several_broker_nodes_are_reported_one_by_one(
    run_cli: RunCli, service_env: Settings
) -> None:
    provision_consumer_queues(service_env, unique_name("nodes"))  # declares the exchange
    dead = closed_port()
    live = service_env.broker.url
    nodes = f"{live.replace('127.0.0.1:5672', f'127.0.0.1:{dead}')},{live}"
    code, checks, _ = doctor_json(run_cli, "--rabbitmq-url", nodes)

    vhost = live.rsplit("/", 1)[1]
    assert checks["rabbitmq"]["status"] == "ok"  # the live node serves
    assert checks[f"rabbitmq node 127.0.0.1:{dead}/{vhost}"]["status"] == "warn"
    assert checks[f"rabbitmq node 127.0.0.1:5672/{vhost}"]["status"] == "ok"
    cluster = checks["rabbitmq cluster"]  # the local broker: one member, short of 3
    assert cluster["status"] == "warn" and "1 member(s)" in cluster["detail"]
    assert "3 nodes" in cluster["hint"]
    assert code != 0
