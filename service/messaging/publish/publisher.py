"""Publishing with publisher confirms and ``mandatory``, pipelined per batch.

pika's BlockingChannel waits for one confirm per message. ``ConfirmingPublisher`` drives a
SelectConnection's IO loop from the calling thread instead: it writes a whole batch, then
runs the loop until every message is acked, nacked or returned. A returned (unroutable)
message is a failure, never "published". One publisher per thread; not thread-safe.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pika
from pika import spec
from pika.adapters.select_connection import SelectConnection
from pika.channel import Channel

from service.messaging import topology
from service.messaging.connection import (
    CONNECT_TIMEOUT_SECONDS,
    BrokerNodes,
    BrokerUnavailable,
    connection_parameters,
    first_answering,
)
from service.messaging.messages import OutboundEvent, message_body, message_properties

log = logging.getLogger(__name__)

CONFIRM_TIMEOUT_SECONDS = 10.0
CLOSE_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class OutgoingMessage:
    """A message to publish on the ``customer_events`` exchange."""

    routing_key: str
    body: bytes
    properties: pika.BasicProperties

    @property
    def key(self) -> str:
        return str(self.properties.message_id)


@dataclass(frozen=True)
class PublishResult:
    """The broker's answer for one message: confirmed and routed, or why not.

    ``sent`` is False when the message was withheld (its gate said no) and never written;
    ``nacked`` when the broker refused it (``basic.nack``: a queue at its ``x-max-length``
    with ``x-overflow: reject-publish``, or an internal error), so it is not in the queue.
    """

    ok: bool
    reason: str | None = None
    sent: bool = True
    nacked: bool = False


CONFIRMED = PublishResult(ok=True)
WITHHELD = PublishResult(False, "withheld: its gate closed before the publish", sent=False)
NACKED = PublishResult(False, "nacked by the broker (queue full?)", nacked=True)
Gate = Callable[[int], bool]  # asked with a message's index right before its basic_publish


def outgoing_event(event: OutboundEvent, headers: dict[str, Any] | None = None) -> OutgoingMessage:
    """The message for one event, routed ``customer.{kind}.{consumer_name}``."""
    return OutgoingMessage(
        event.routing_key, message_body(event), message_properties(event, headers)
    )


class ConfirmingPublisher:
    """One connection and one confirm-mode channel; reconnects on the next call when lost."""

    def __init__(
        self,
        url: str,
        *,
        confirm_timeout: float = CONFIRM_TIMEOUT_SECONDS,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
        exchange: str = topology.EXCHANGE,
    ):
        self.url = url
        self._node = url  # the node of the current connection (one of ``url``'s list)
        self.confirm_timeout = confirm_timeout
        self.connect_timeout = connect_timeout
        self.exchange = exchange
        self._connection: SelectConnection | None = None
        self._channel: Channel | None = None
        self._ready = False
        self._error: str | None = None
        self._until: Callable[[], bool] | None = None
        self._tag = 0
        self._return_reason = "unroutable"
        self._pending: dict[int, int] = {}
        self._keys: dict[int, str] = {}
        self._returned: Counter[str] = Counter()
        self._results: list[PublishResult | None] = []

    def __enter__(self) -> ConfirmingPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public API -------------------------------------------------------------------------

    def connect(self) -> None:
        """Open the connection and confirm-mode channel if needed, on the first node of the
        URL list that answers; raise BrokerUnavailable when none does."""
        if self._ready:
            return
        first_answering(self.url, self._connect_node, (BrokerUnavailable,))

    def _connect_node(self, url: str) -> None:
        self._discard()
        self._node = url
        self._error = None
        self._connection = SelectConnection(
            connection_parameters(url, connect_timeout=self.connect_timeout),
            on_open_callback=self._on_connection_open,
            on_open_error_callback=self._on_connection_error,
            on_close_callback=self._on_connection_closed,
        )
        opened = self._run_until(
            lambda: self._ready or self._error is not None, self.connect_timeout * 2 + 1
        )
        if not opened or not self._ready:
            reason = self._error or f"no answer within {self.connect_timeout * 2 + 1:.0f}s"
            self._discard()
            raise BrokerUnavailable(reason)

    def publish_batch(
        self, messages: Sequence[OutgoingMessage], gate: Gate | None = None
    ) -> list[PublishResult]:
        """Publish every message, then wait for all confirms; one result per message.

        ``gate``, when given, is asked right before each ``basic_publish`` (after any
        reconnect): a message it refuses is not written and comes back ``WITHHELD``.
        """
        if not messages:
            return []
        self.connect()
        results: list[PublishResult | None] = [None] * len(messages)
        self._results = results
        self._write_all(messages, gate)
        finished = self._run_until(
            lambda: not self._pending or not self._ready, self.confirm_timeout
        )
        if self._pending:
            reason = self._error or f"no confirm within {self.confirm_timeout:.0f}s"
            self._fail_pending(f"not confirmed: {reason}")
            if not finished:  # a silent node: start the next connect with another one
                BrokerNodes.of(self.url).lost(self._node)
                self._discard()
        self._reset_batch_state()
        return [result or PublishResult(False, "not confirmed") for result in results]

    def publish(self, message: OutgoingMessage) -> PublishResult:
        """Publish one message and wait for its confirm."""
        return self.publish_batch([message])[0]

    def keepalive(self) -> None:
        """Process pending IO (heartbeats, a broker-side close) without publishing."""
        if self._connection is not None and self._ready:
            self._run_until(lambda: False, 0)

    def close(self) -> None:
        """Close the connection (bounded) and release the IO loop."""
        connection = self._connection
        if connection is not None and connection.is_open:
            connection.close()
            self._run_until(lambda: connection.is_closed, CLOSE_TIMEOUT_SECONDS)
        self._discard()

    # -- IO loop ----------------------------------------------------------------------------

    def _run_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Run the IO loop until ``done()`` or ``timeout`` seconds; return ``done()``."""
        if self._connection is None:
            return done()
        if done() and timeout > 0:
            return True
        ioloop = self._connection.ioloop
        self._until = done
        timer = ioloop.call_later(timeout, ioloop.stop)
        try:
            ioloop.start()
        finally:
            self._until = None
            ioloop.remove_timeout(timer)
        return done()

    def _check_done(self) -> None:
        if self._until is not None and self._until() and self._connection is not None:
            self._connection.ioloop.stop()

    def _discard(self) -> None:
        """Forget the connection; close its IO loop so no descriptor leaks."""
        connection, self._connection = self._connection, None
        self._channel = None
        self._ready = False
        if connection is not None:
            try:
                connection.ioloop.close()
            except Exception:  # the loop may already be closed
                log.debug("closing a discarded IO loop failed", exc_info=True)

    # -- batch bookkeeping ------------------------------------------------------------------

    def _reset_batch_state(self) -> None:
        self._pending = {}
        self._keys = {}
        self._returned = Counter()
        self._results = []

    def _write_all(self, messages: Sequence[OutgoingMessage], gate: Gate | None) -> None:
        for index, message in enumerate(messages):
            if gate is not None and not gate(index):
                self._results[index] = WITHHELD
                continue
            if not self._ready or self._channel is None:
                self._results[index] = PublishResult(False, f"channel closed: {self._error}")
                continue
            self._tag += 1
            self._pending[self._tag] = index
            self._keys[self._tag] = message.key
            self._channel.basic_publish(
                self.exchange,
                message.routing_key,
                message.body,
                message.properties,
                mandatory=True,
            )

    def _fail_pending(self, reason: str) -> None:
        for index in self._pending.values():
            self._results[index] = PublishResult(False, reason)
        self._pending.clear()

    # -- pika callbacks ---------------------------------------------------------------------

    def _on_connection_open(self, connection: Any) -> None:
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_connection_error(self, _connection: Any, error: BaseException) -> None:
        self._error = f"connection failed: {error!r}"
        self._check_done()

    def _on_connection_closed(self, _connection: Any, reason: BaseException) -> None:
        self._error = self._error or f"connection closed: {reason!r}"
        self._ready = False
        self._check_done()

    def _on_channel_open(self, channel: Channel) -> None:
        self._channel = channel
        self._tag = 0
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(self._on_confirm, callback=self._on_confirm_mode)

    def _on_confirm_mode(self, frame: Any) -> None:
        assert self._channel is not None
        if not self.exchange:  # the default exchange (straight to a queue) always exists
            self._on_ready(frame)
            return
        self._channel.exchange_declare(
            self.exchange, topology.EXCHANGE_TYPE, durable=True, callback=self._on_ready
        )

    def _on_ready(self, _frame: Any) -> None:
        self._ready = True
        self._check_done()

    def _on_channel_closed(self, _channel: Channel, reason: BaseException) -> None:
        self._error = f"channel closed: {reason!r}"
        self._ready = False
        connection = self._connection
        if connection is not None and connection.is_open:
            connection.close()
        self._check_done()

    def _on_return(self, _channel: Channel, method: Any, properties: Any, _body: bytes) -> None:
        self._returned[str(properties.message_id)] += 1
        self._return_reason = (
            f"unroutable ({method.reply_code} {method.reply_text}): no queue is bound to "
            f"{method.routing_key}; provision it with `fintegrate queues provision`"
        )

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        acked = isinstance(method, spec.Basic.Ack)
        if method.multiple:
            tags = list(itertools.takewhile(lambda tag: tag <= method.delivery_tag, self._pending))
        else:
            tags = [method.delivery_tag]
        for tag in tags:
            self._settle(tag, acked)
        self._check_done()

    def _settle(self, tag: int, acked: bool) -> None:
        index = self._pending.pop(tag, None)
        key = self._keys.pop(tag, "")
        if index is None:
            return
        if self._returned[key] > 0:
            self._returned[key] -= 1
            self._results[index] = PublishResult(False, self._return_reason)
        elif acked:
            self._results[index] = CONFIRMED
        else:
            self._results[index] = NACKED
