from service.config import Settings
from service.messaging import topology


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
    }
    assert topology.dlq_name("acme") == "customer_notification_acme_DLQ"


def test_expected_topology_takes_ttl_and_max_length_from_the_settings() -> None:
    settings = Settings(queue_message_ttl_ms=1500, queue_max_length=300)
    arguments = topology.expected_topology(settings, "acme").queue_arguments
    assert arguments["x-message-ttl"] == 1500
    assert arguments["x-max-length"] == 300
    defaults = topology.expected_topology(Settings(), "acme").queue_arguments
    assert (defaults["x-message-ttl"], defaults["x-max-length"]) == (86_400_000, 100_000)
