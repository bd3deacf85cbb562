"""The single source of exchange, queue, DLQ, argument and routing-key names (SPEC 5)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:  # the worker imports the names without pydantic-settings (docs/events.md)
    from service.config import Settings

EXCHANGE = "customer_events"
EXCHANGE_TYPE = "topic"
QUEUE_PREFIX = "customer_notification_"
DLQ_SUFFIX = "_DLQ"
MESSAGE_TTL_MS = 86_400_000
MAX_LENGTH = 100_000
SCHEMA_VERSION = 1

# The event vocabulary, defined once: the API schemas use the Literal, the CLI builds its
# choices from EVENT_TYPES, and tests/service/test_event_vocabulary.py holds the SQL CHECK
# to it. Customer events first, then system events (no customer).
EventType = Literal[
    "customer_creation",
    "customer_deletion",
    "customer_status_change",
    "customer_erasure",
    "consumer_created",
]
EVENT_TYPES: tuple[EventType, ...] = get_args(EventType)

CONSUMER_NAME_PATTERN = re.compile(r"^[a-z0-9_]+$")
CONSUMER_NAME_MAX_LENGTH = 64


def event_kind(event_type: str) -> str:
    """The routing kind of an event type: its name without the ``customer_`` prefix."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}; expected one of {EVENT_TYPES}")
    return event_type.removeprefix("customer_")


def routing_key(event_type: str, consumer_name: str) -> str:
    """``customer.{kind}.{consumer_name}``: ``customer.creation.consumer_test001``."""
    return f"customer.{event_kind(event_type)}.{consumer_name}"


def queue_name(consumer_name: str) -> str:
    """The tenant's main queue."""
    return f"{QUEUE_PREFIX}{consumer_name}"


def dlq_name(consumer_name: str) -> str:
    """The tenant's dead-letter queue."""
    return f"{queue_name(consumer_name)}{DLQ_SUFFIX}"


def dlq_routing_key(consumer_name: str) -> str:
    """The routing key dead letters are republished with; bound only to the DLQ."""
    return f"customer.dlq.{consumer_name}"


MIGRATION_STASH_SUFFIX = "_MIGRATION_STASH"
MIGRATION_INBOX_SUFFIX = "_MIGRATION_INBOX"
# A full tenant queue refuses new publishes (the broker nacks them, the relay backs off and
# the event waits in the outbox) instead of dropping its oldest message; a full DLQ drops
# its oldest dead letter, so the newest handler failures are kept (docs/events.md).
QUEUE_OVERFLOW = "reject-publish"
DLQ_OVERFLOW = "drop-head"
DLQ_MAX_LENGTH = 100_000


@dataclass(frozen=True)
class QueueShape:
    """How tenant queues are declared: their type and limits (``queue_shape(settings)``)."""

    queue_type: str = "classic"
    delivery_limit: int = 5
    message_ttl_ms: int = MESSAGE_TTL_MS
    max_length: int = MAX_LENGTH
    dlq_max_length: int = DLQ_MAX_LENGTH
    dlq_max_length_bytes: int | None = None


def queue_shape(settings: Settings) -> QueueShape:
    """The queue type and limits these settings ask for."""
    return QueueShape(
        queue_type=settings.queue_type,
        delivery_limit=settings.quorum_delivery_limit,
        message_ttl_ms=settings.queue_message_ttl_ms,
        max_length=settings.queue_max_length,
        dlq_max_length=settings.dlq_max_length,
        dlq_max_length_bytes=settings.dlq_max_length_bytes,
    )


DEFAULT_SHAPE = QueueShape()  # the seed's values: classic queues, SPEC 5 limits


def queue_arguments(consumer_name: str, shape: QueueShape = DEFAULT_SHAPE) -> dict[str, Any]:
    """The exact x-arguments of the tenant's main queue."""
    arguments: dict[str, Any] = {
        "x-dead-letter-exchange": EXCHANGE,
        "x-dead-letter-routing-key": dlq_routing_key(consumer_name),
        "x-message-ttl": shape.message_ttl_ms,
        "x-max-length": shape.max_length,
        "x-overflow": QUEUE_OVERFLOW,
    }
    if shape.queue_type == "quorum":
        arguments["x-queue-type"] = "quorum"
        arguments["x-delivery-limit"] = shape.delivery_limit
    return arguments


def dlq_arguments(shape: QueueShape = DEFAULT_SHAPE) -> dict[str, Any]:
    """The exact x-arguments of the tenant's DLQ: bounded, oldest dropped first."""
    arguments: dict[str, Any] = {"x-max-length": shape.dlq_max_length, "x-overflow": DLQ_OVERFLOW}
    if shape.dlq_max_length_bytes is not None:
        arguments["x-max-length-bytes"] = shape.dlq_max_length_bytes
    if shape.queue_type == "quorum":
        arguments["x-queue-type"] = "quorum"
    return arguments


def migration_stash_name(queue: str) -> str:
    """Where a queue's old messages wait while it is redeclared (uppercase: never a tenant)."""
    return f"{queue}{MIGRATION_STASH_SUFFIX}"


def migration_inbox_name(queue: str) -> str:
    """Where a queue's new messages arrive while it is redeclared."""
    return f"{queue}{MIGRATION_INBOX_SUFFIX}"


def queue_bindings(consumer_name: str) -> list[str]:
    """Routing keys bound to the main queue: one per event type, never the DLQ key."""
    return [routing_key(event_type, consumer_name) for event_type in EVENT_TYPES]


@dataclass(frozen=True)
class TenantTopology:
    """Everything declared for one tenant."""

    consumer_name: str
    queue: str
    dlq: str
    queue_arguments: dict[str, Any] = field(default_factory=dict)
    dlq_arguments: dict[str, Any] = field(default_factory=dict)
    bindings: tuple[str, ...] = ()
    dlq_binding: str = ""


def tenant_topology(consumer_name: str, shape: QueueShape = DEFAULT_SHAPE) -> TenantTopology:
    """The declared shape of one tenant's queues and bindings."""
    if not CONSUMER_NAME_PATTERN.match(consumer_name):
        raise ValueError(f"invalid consumer name {consumer_name!r}: must match ^[a-z0-9_]+$")
    return TenantTopology(
        consumer_name=consumer_name,
        queue=queue_name(consumer_name),
        dlq=dlq_name(consumer_name),
        queue_arguments=queue_arguments(consumer_name, shape),
        dlq_arguments=dlq_arguments(shape),
        bindings=tuple(queue_bindings(consumer_name)),
        dlq_binding=dlq_routing_key(consumer_name),
    )


def expected_topology(settings: Settings, consumer_name: str) -> TenantTopology:
    """The tenant's topology with the queue type and limits these settings ask for."""
    return tenant_topology(consumer_name, queue_shape(settings))


# Tenants' own broker users (SPEC 4.3, second wave): read their queue and DLQ, nothing else.
NO_RESOURCE = "^$"


def broker_username(consumer_name: str, vhost: str) -> str:
    """The tenant's RabbitMQ user, ``{consumer_name}.{vhost}``: users are broker-wide, so the
    vhost keeps two environments sharing one broker apart (names never contain a dot)."""
    return f"{consumer_name}.{vhost}"


def broker_read_permission(consumer_name: str) -> str:
    """The ``read`` permission of the tenant's user: exactly its queue and its DLQ."""
    return f"^({re.escape(queue_name(consumer_name))}|{re.escape(dlq_name(consumer_name))})$"
