"""Operator views and actions on tenant queues: depth, consumers, purge."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import pika
import pika.exceptions

from service.config import BrokerSettings
from service.messaging import topology
from service.messaging.connection import open_blocking, vhost_of
from service.messaging.operate.management import ManagementClient

NOT_FOUND = 404


@dataclass(frozen=True)
class QueueStatus:
    """One tenant's queue and DLQ; None where the source cannot tell."""

    consumer_name: str
    queue: str
    exists: bool
    ready: int | None
    unacked: int | None
    consumers: int | None
    dlq_ready: int | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def tenant_names_from_queues(queue_names: Iterable[str]) -> list[str]:
    """Consumer names of the tenant main queues among ``queue_names`` (the DLQs and a
    migration's temporary queues end in uppercase, which no consumer name has)."""
    return sorted(
        name.removeprefix(topology.QUEUE_PREFIX)
        for name in queue_names
        if name.startswith(topology.QUEUE_PREFIX)
        and topology.CONSUMER_NAME_PATTERN.match(name.removeprefix(topology.QUEUE_PREFIX))
    )


def queue_status(settings: BrokerSettings, consumer_names: list[str] | None) -> list[QueueStatus]:
    """Per tenant: depth, unacked, consumers and DLQ depth.

    Uses the management API when configured (``consumer_names`` None: every tenant queue of
    the vhost); otherwise passive declares over AMQP for the names given.
    """
    if settings.management_url:
        with ManagementClient(settings.management_url, vhost_of(settings.url)) as client:
            return status_from_management(client.queues(), consumer_names)
    connection = open_blocking(settings.url)
    try:
        return [status_from_declares(connection, name) for name in consumer_names or []]
    finally:
        connection.close()


def status_from_management(
    queues: list[dict[str, Any]], consumer_names: list[str] | None
) -> list[QueueStatus]:
    by_name = {queue["name"]: queue for queue in queues}
    names = consumer_names if consumer_names is not None else tenant_names_from_queues(by_name)
    rows = []
    for name in names:
        main = by_name.get(topology.queue_name(name))
        dlq = by_name.get(topology.dlq_name(name))
        rows.append(
            QueueStatus(
                consumer_name=name,
                queue=topology.queue_name(name),
                exists=main is not None,
                ready=main.get("messages_ready", 0) if main else None,
                unacked=main.get("messages_unacknowledged", 0) if main else None,
                consumers=main.get("consumers", 0) if main else None,
                dlq_ready=dlq.get("messages_ready", 0) if dlq else None,
            )
        )
    return rows


def status_from_declares(connection: pika.BlockingConnection, name: str) -> QueueStatus:
    main = passive_declare(connection, topology.queue_name(name))
    dlq = passive_declare(connection, topology.dlq_name(name))
    return QueueStatus(
        consumer_name=name,
        queue=topology.queue_name(name),
        exists=main is not None,
        ready=main.message_count if main else None,
        unacked=None,
        consumers=main.consumer_count if main else None,
        dlq_ready=dlq.message_count if dlq else None,
    )


def passive_declare(connection: pika.BlockingConnection, queue: str) -> Any:
    """The queue's DeclareOk (message and consumer counts), or None when it does not exist."""
    channel = connection.channel()
    try:
        frame = channel.queue_declare(queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == NOT_FOUND:
            return None
        raise
    channel.close()
    return frame.method


def ready_count(settings: BrokerSettings, queue: str) -> int | None:
    """Messages ready in ``queue``; None when it does not exist."""
    connection = open_blocking(settings.url)
    try:
        declared = passive_declare(connection, queue)
        return None if declared is None else int(declared.message_count)
    finally:
        connection.close()


def purge_queue(settings: BrokerSettings, queue: str) -> int:
    """Drop every ready message of ``queue``; returns how many went."""
    connection = open_blocking(settings.url)
    try:
        return int(connection.channel().queue_purge(queue).method.message_count)
    finally:
        connection.close()
