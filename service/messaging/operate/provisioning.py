"""Declare a tenant's exchange, queue, DLQ and bindings (SPEC 5); idempotent and bounded."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import pika
import pika.exceptions

from service.config import Settings
from service.messaging import topology
from service.messaging.connection import BROKER_ERRORS, BrokerUnavailable, open_blocking
from service.messaging.operate.inspection import (
    PRECONDITION_FAILED,
    TopologyReport,
    inspect_tenant,
    inspect_with_declares,
    migration_leftovers,
)

PROVISION_TIMEOUT_SECONDS = 3.0
PROVISION_CONNECT_TIMEOUT_SECONDS = 1.0
PROVISION_HEARTBEAT_SECONDS = 5
T = TypeVar("T")


@dataclass(frozen=True)
class ProvisionResult:
    """What was declared for one tenant."""

    consumer_name: str
    exchange: str
    queue: str
    dlq: str
    bindings: tuple[str, ...]
    dlq_binding: str
    queue_arguments: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {**vars(self), "bindings": list(self.bindings)}


class TopologyMismatch(Exception):
    """A live queue differs from the expected one; carries the full report."""

    def __init__(self, report: TopologyReport):
        self.report = report
        super().__init__(
            f"queues of {report.consumer_name} differ from the expected topology: "
            + "; ".join(report.advice())
        )


def provision_consumer_queues(
    settings: Settings, consumer_name: str, timeout: float = PROVISION_TIMEOUT_SECONDS
) -> ProvisionResult:
    """Declare one tenant's queues within ``timeout`` seconds.

    Raises BrokerUnavailable when RabbitMQ is down or too slow, TopologyMismatch when a
    live queue has other arguments (nothing is redeclared then).
    """
    expected = topology.expected_topology(settings.queues, consumer_name)

    def declare() -> ProvisionResult:
        connection = open_blocking(
            settings.broker.url,
            connect_timeout=PROVISION_CONNECT_TIMEOUT_SECONDS,
            heartbeat=PROVISION_HEARTBEAT_SECONDS,
        )
        try:
            return declare_tenant(connection, expected, settings)
        except BROKER_ERRORS as exc:
            raise BrokerUnavailable(f"provisioning {consumer_name} failed: {exc!r}") from exc
        finally:
            _close_quietly(connection)

    return call_with_deadline(declare, timeout)


def provision_many(
    settings: Settings, names: Iterable[str]
) -> list[ProvisionResult | TopologyMismatch]:
    """Provision several tenants over one connection; a mismatch is reported, not raised.

    A tenant whose queue migration is unfinished is reported too, and left alone: binding
    its queue now would let new events overtake the ones still being moved.
    """
    connection = open_blocking(settings.broker.url)
    outcomes: list[ProvisionResult | TopologyMismatch] = []
    try:
        for name in names:
            expected = topology.expected_topology(settings.queues, name)
            try:
                if migration_leftovers(connection, expected):
                    raise TopologyMismatch(_mismatch_report(connection, expected, settings))
                outcomes.append(declare_tenant(connection, expected, settings))
            except TopologyMismatch as mismatch:
                outcomes.append(mismatch)
    finally:
        _close_quietly(connection)
    return outcomes


def declare_tenant(
    connection: pika.BlockingConnection, expected: topology.TenantTopology, settings: Settings
) -> ProvisionResult:
    """Exchange, DLQ, main queue and bindings; TopologyMismatch on differing arguments."""
    channel = connection.channel()
    channel.exchange_declare(topology.EXCHANGE, topology.EXCHANGE_TYPE, durable=True)
    for queue, arguments in (
        (expected.dlq, expected.dlq_arguments),
        (expected.queue, expected.queue_arguments),
    ):
        try:
            channel.queue_declare(queue, durable=True, arguments=arguments)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != PRECONDITION_FAILED:
                raise
            raise TopologyMismatch(_mismatch_report(connection, expected, settings)) from exc
    channel.queue_bind(expected.dlq, topology.EXCHANGE, expected.dlq_binding)
    for key in expected.bindings:
        channel.queue_bind(expected.queue, topology.EXCHANGE, key)
    channel.close()
    return ProvisionResult(
        consumer_name=expected.consumer_name,
        exchange=topology.EXCHANGE,
        queue=expected.queue,
        dlq=expected.dlq,
        bindings=expected.bindings,
        dlq_binding=expected.dlq_binding,
        queue_arguments=expected.queue_arguments,
    )


def _mismatch_report(
    connection: pika.BlockingConnection, expected: topology.TenantTopology, settings: Settings
) -> TopologyReport:
    """The full report (management API) or what passive declares and 406s tell."""
    if settings.broker.management_url:
        return inspect_tenant(settings, expected.consumer_name)
    return inspect_with_declares(connection, expected)


def call_with_deadline(call: Callable[[], T], timeout: float) -> T:
    """Run ``call`` in a helper thread; BrokerUnavailable if it takes over ``timeout`` s.

    A stuck helper ends on its own when the connection's heartbeat or socket times out.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="fintegrate-provision", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise BrokerUnavailable(f"RabbitMQ did not answer within {timeout:.0f}s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _close_quietly(connection: pika.BlockingConnection) -> None:
    try:
        if connection.is_open:
            connection.close()
    except pika.exceptions.AMQPError:
        pass
