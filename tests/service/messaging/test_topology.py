from service.config import QueueSettings, load_settings
from service.messaging import topology
from service.messaging.operate.queue_ops import tenant_names_from_queues


def test_routing_key_drops_customer_prefix() -> None:
    assert topology.routing_key("customer_creation", "consumer_test001") == (
        "customer.creation.consumer_test001"
    )
    assert topology.routing_key("consumer_created", "acme") == "customer.consumer_created.acme"


def test_bindings_never_match_the_dlq_key() -> None:
    bindings = topology.queue_bindings("acme")
    assert topology.dlq_routing_key("acme") not in bindings
    assert len(bindings) == len(topology.EVENT_TYPES)
    assert all("*" not in key and "#" not in key for key in bindings)


def test_queue_arguments_are_exactly_the_spec() -> None:
    assert topology.queue_arguments("acme") == {
        "x-dead-letter-exchange": "customer_events",
        "x-dead-letter-routing-key": "customer.dlq.acme",
        "x-message-ttl": 86400000,
        "x-max-length": 100000,
        "x-overflow": "reject-publish",
    }
    assert topology.dlq_arguments() == {"x-max-length": 100000, "x-overflow": "drop-head"}
    assert topology.dlq_name("acme") == "customer_notification_acme_DLQ"


def test_limits_come_from_the_settings() -> None:
    tuned = load_settings(
        queue_message_ttl_ms=4000,
        queue_max_length=300,
        dlq_max_length=50,
        dlq_max_length_bytes=65536,
        queue_type="quorum",
    )
    expected = topology.expected_topology(tuned.queues, "acme")
    assert expected.queue_arguments["x-message-ttl"] == 4000
    assert expected.queue_arguments["x-max-length"] == 300
    assert expected.queue_arguments["x-overflow"] == "reject-publish"
    assert expected.dlq_arguments == {
        "x-max-length": 50,
        "x-max-length-bytes": 65536,
        "x-overflow": "drop-head",
        "x-queue-type": "quorum",
    }


def test_migration_queues_never_look_like_a_tenant() -> None:
    queue = topology.queue_name("acme")
    names = [
        queue,
        topology.dlq_name("acme"),
        topology.migration_stash_name(queue),
        topology.migration_inbox_name(topology.dlq_name("acme")),
    ]
    assert tenant_names_from_queues(names) == ["acme"]


def test_expected_topology_takes_ttl_and_max_length_from_the_settings() -> None:
    settings = load_settings(queue_message_ttl_ms=1500, queue_max_length=300)
    arguments = topology.expected_topology(settings.queues, "acme").queue_arguments
    assert arguments["x-message-ttl"] == 1500
    assert arguments["x-max-length"] == 300
    defaults = topology.expected_topology(QueueSettings(), "acme").queue_arguments
    assert (defaults["x-message-ttl"], defaults["x-max-length"]) == (86_400_000, 100_000)
