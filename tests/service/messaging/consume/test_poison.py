"""The worker never crash-loops: unreadable messages and failing handlers of every kind are
dead-lettered once with a reason, and the worker goes on with the next message."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from sqlalchemy import Engine

from service.config import Settings
from service.messaging import topology
from service.messaging.consume.poison import MAX_DETAIL_CHARS, call_handler, decode_message
from service.messaging.messages import EventMessage, InvalidMessage
from tests.support.outbox import amqp_channel, queue_depth, wait_until
from tests.support.worker import (
    Tenant,
    WorkerThread,
    create_customers,
    event_body,
    publish_all,
    receipt_statuses,
    tenant_events,
)

UNREADABLE = {
    "deep nesting": b"[" * 200_000 + b"]" * 200_000,
    "deep object": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "bad encoding": b"\xff\xfe\x00{",
    "invalid utf-8": b'{"event_id": "\xc3\x28"}',
    "not json": b"hello",
    "empty": b"",
    "not an object": b"[1, 2]",
    "no event id": event_body(event_id=None),
    "unknown type": event_body(event_type="customer.creation"),
    "consumer not an object": event_body(consumer="acme"),
    "bad sequence": event_body(sequence=True),
    "huge number": b'{"event_id": ' + b"9" * 5000 + b"}",
}


@pytest.mark.parametrize("name", list(UNREADABLE))
def test_every_unreadable_body_is_an_invalid_message(name: str) -> None:
    with pytest.raises(InvalidMessage):
        decode_message(UNREADABLE[name])


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message for you")


# built when raised: a lone surrogate held by the test module itself would break xdist's
# report serialisation, not the worker
FAILURES: dict[str, Callable[[], BaseException]] = {
    "exception": lambda: ValueError("bad"),
    "system exit": lambda: SystemExit(3),
    "keyboard interrupt": lambda: KeyboardInterrupt(),
    "unprintable": lambda: Unprintable(),
    "lone surrogate": lambda: ValueError(chr(0xDCFF) + " broken"),
    "huge message": lambda: ValueError("x" * 100_000),
}


@pytest.mark.parametrize("name", list(FAILURES))
def test_every_handler_failure_is_a_failed_receipt_that_can_be_sent(name: str) -> None:
    failure = FAILURES[name]()

    def handler(message: EventMessage) -> None:
        raise failure

    status, detail = call_handler(handler, decode_message(event_body()))

    assert status == "failed" and detail
    assert len(detail) <= MAX_DETAIL_CHARS
    detail.encode("utf-8")  # a receipt body that json/httpx can encode
    assert type(failure).__name__ in detail


def test_the_worker_survives_poison_and_hostile_handlers_and_goes_on(
    settings: Settings,
    engine: Engine,
    api: httpx.Client,
    tenant: Tenant,
    live_server: str,
) -> None:
    key = topology.routing_key("customer_creation", tenant["name"])
    with amqp_channel(settings.broker.url) as channel:
        for body in UNREADABLE.values():
            channel.basic_publish(topology.EXCHANGE, key, body)
    create_customers(api, tenant, 3)
    publish_all(settings, engine)
    events = tenant_events(engine, tenant)  # consumer_created + 3 customers
    hostile = iter([SystemExit(1), KeyboardInterrupt(), Unprintable()])

    def handler(message: EventMessage) -> None:
        failure = next(hostile, None)
        if failure is not None:
            raise failure

    dlq = topology.dlq_name(tenant["name"])
    expected_dead = len(UNREADABLE) + 3
    with WorkerThread(settings, tenant, live_server, handler) as worker:
        assert wait_until(lambda: queue_depth(settings.broker.url, dlq) == expected_dead)
        assert wait_until(lambda: len(receipt_statuses(engine, tenant)) == len(events))
    assert worker.consumer.stats.poison == len(UNREADABLE)
    statuses = sorted(status for _, status in receipt_statuses(engine, tenant))
    assert statuses == ["failed"] * 3 + ["processed"] * (len(events) - 3)
    assert queue_depth(settings.broker.url, tenant["queue_name"]) == 0
