"""Move a live tenant queue to its expected arguments or type, keeping every message in order.

RabbitMQ cannot change a queue's arguments (or classic → quorum) in place. For each queue
whose live arguments differ — the DLQ first, then the main queue — with Q the queue, its
inbox ``Q_MIGRATION_INBOX`` and its stash ``Q_MIGRATION_STASH``:

1. *reroute*: declare the inbox with the expected arguments and move Q's routing keys to
   it, so messages published from now on wait there;
2. *stash*: move Q's messages, in order, to the stash (a plain durable queue) while holding
   Q with an exclusive consumer, then delete Q (only if empty and unused);
3. *redeclare* Q with the expected arguments and move the stash back into it, in order;
4. *drain*: move the routing keys back to Q and the inbox's messages after the stash's.

Every move consumes, republishes through the default exchange with publisher confirms and
``mandatory``, and acks the source only after the confirm. The main queue's keys move
unbind-first: a publish in between is unroutable, and the relay retries it later (holding
back that customer's later events), so nothing is copied or overtaken. The DLQ's key moves
bind-first, because dead-lettering is not retried: a dead letter in between may land in
both queues, never in neither. Each step starts from what the broker holds (Q's live
arguments, whether the stash and inbox exist), so a run that stopped anywhere is continued
by running it again. A stop between a batch's confirm and its ack leaves that batch in
both queues; the second time its messages arrive redelivered, and are moved marked
``x-fintegrate-possible-duplicate``, so the worker checks them and skips the copies.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pika
import pika.exceptions

from service.config import Settings
from service.messaging import topology
from service.messaging.connection import open_blocking
from service.messaging.messages import POSSIBLE_DUPLICATE_HEADER
from service.messaging.operate.migration_plan import (
    MigrationTarget,
    QueueMigration,
    plan_migration,
)
from service.messaging.operate.queue_ops import passive_declare
from service.messaging.publish.publisher import ConfirmingPublisher, OutgoingMessage

MOVE_BATCH = 200
IDLE_SECONDS = 0.5
ACCESS_REFUSED = 403

# (queue, messages moved so far by this step)
Progress = Callable[[str, int], None]


class MigrationBlocked(Exception):
    """The queue cannot be migrated now (a consumer holds it); nothing was moved."""


class MigrationStopped(Exception):
    """A step failed part way; running the migration again continues it."""


def migrate_tenant(
    settings: Settings, consumer_name: str, on_progress: Progress = lambda _q, _n: None
) -> list[QueueMigration]:
    """Migrate every queue of the tenant that needs it; returns the plans with their results.

    Raises MigrationBlocked (a consumer holds a queue that must move; nothing of that queue
    was changed) or MigrationStopped (run again to continue).
    """
    plans = plan_migration(settings, consumer_name)
    for plan in plans:
        refusal = plan.refusal()
        if refusal:
            raise MigrationBlocked(refusal)
        if plan.needed and plan.exists and plan.drift and plan.consumers:
            raise MigrationBlocked(
                f"{plan.target.queue} has {plan.consumers} consumer(s): stop the tenant's "
                "worker (`fintegrate consume`) and run again; nothing was changed"
            )
    with QueueMover(settings.broker.url) as mover:
        for plan in plans:
            if plan.needed:
                plan.moved = mover.migrate(plan, partial(on_progress, plan.target.queue))
                plan.result = "migrated"
            else:
                plan.result = "up to date"
    return plans


class QueueMover:
    """One connection for declares and consumes, one confirming publisher for the moves."""

    def __init__(self, url: str):
        self.connection = open_blocking(url)
        self.channel = self.connection.channel()
        self.channel.exchange_declare(topology.EXCHANGE, topology.EXCHANGE_TYPE, durable=True)
        self.publisher = ConfirmingPublisher(url, exchange="")

    def __enter__(self) -> QueueMover:
        return self

    def __exit__(self, *exc: object) -> None:
        self.publisher.close()
        if self.connection.is_open:
            self.connection.close()

    def migrate(self, plan: QueueMigration, on_moved: Callable[[int], None]) -> int:
        """Steps 1-4 of the module docstring for one queue, from wherever it stands; how many
        message moves it made (an old message moves twice: out and back)."""
        target, moved = plan.target, 0
        if plan.exists and plan.drift:  # steps 1 and 2: the old queue is still there
            self.declare(target.inbox, target.arguments)
            self.reroute(target, source=target.queue, destination=target.inbox)
            self.declare(target.stash, {})
            moved += self.move(target.queue, target.stash, on_moved)
            self.delete(target.queue)
        self.declare(target.queue, target.arguments)  # step 3
        if self.exists(target.stash):
            moved += self.move(target.stash, target.queue, lambda n: on_moved(moved + n))
            self.delete(target.stash)
        return moved + self.drain_inbox(target, lambda n: on_moved(moved + n))

    def drain_inbox(self, target: MigrationTarget, on_moved: Callable[[int], None]) -> int:
        """Step 4: the routing keys back to the queue, the inbox's messages after the rest."""
        if not self.exists(target.inbox):
            self.bind(target.queue, target.bindings)
            return 0
        if target.keep_order:  # publishes bounce until the inbox's messages are in the queue
            self.unbind(target.inbox, target.bindings)
            moved = self.move(target.inbox, target.queue, on_moved)
            self.bind(target.queue, target.bindings)
        else:
            self.reroute(target, source=target.inbox, destination=target.queue)
            moved = self.move(target.inbox, target.queue, on_moved)
        self.delete(target.inbox)
        return moved

    def reroute(self, target: MigrationTarget, source: str, destination: str) -> None:
        """Move the routing keys from ``source`` to ``destination`` (order: see docstring)."""
        for key in target.bindings:
            if target.keep_order:
                self.channel.queue_unbind(source, topology.EXCHANGE, key)
                self.channel.queue_bind(destination, topology.EXCHANGE, key)
            else:
                self.channel.queue_bind(destination, topology.EXCHANGE, key)
                self.channel.queue_unbind(source, topology.EXCHANGE, key)

    def move(self, source: str, destination: str, on_moved: Callable[[int], None]) -> int:
        """Every message of ``source`` to ``destination``, in order; how many moved."""
        channel = self.connection.channel()
        channel.basic_qos(prefetch_count=MOVE_BATCH)
        moved = 0
        try:
            for batch in self._batches(channel, source):
                self._forward(channel, batch, source, destination)
                moved += len(batch)
                on_moved(moved)
        finally:
            if channel.is_open:
                channel.close()  # anything unacked goes back to ``source``, in place
        return moved

    def _batches(self, channel: Any, source: str) -> Iterator[list[tuple[Any, Any, bytes]]]:
        """Batches of deliveries from an exclusive consumer, until ``source`` is empty."""
        try:
            deliveries = channel.consume(source, exclusive=True, inactivity_timeout=IDLE_SECONDS)
            batch: list[tuple[Any, Any, bytes]] = []
            for method, properties, body in deliveries:
                if method is not None:
                    batch.append((method, properties, body))
                    if len(batch) < MOVE_BATCH:
                        continue
                if batch:
                    yield batch
                    batch = []
                elif _is_empty(passive_declare(self.connection, source)):
                    return
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != ACCESS_REFUSED:
                raise
            raise MigrationBlocked(
                f"another consumer holds {source} ({exc.reply_text}): stop the tenant's "
                "worker and run again to continue"
            ) from exc

    def _forward(self, channel: Any, batch: list[Any], source: str, destination: str) -> None:
        """Publish the batch to ``destination``; ack what was confirmed, in order."""
        results = self.publisher.publish_batch(
            [OutgoingMessage(destination, body, _moved(*delivery)) for *delivery, body in batch]
        )
        failed = next((i for i, result in enumerate(results) if not result.ok), None)
        if failed is None:
            channel.basic_ack(batch[-1][0].delivery_tag, multiple=True)
            return
        if failed:
            channel.basic_ack(batch[failed - 1][0].delivery_tag, multiple=True)
        channel.basic_nack(batch[-1][0].delivery_tag, multiple=True, requeue=True)
        copies = sum(result.ok for result in results[failed:])
        raise MigrationStopped(
            f"{destination} refused a message from {source}: {results[failed].reason}; "
            f"{failed} moved in this batch, the rest stays in {source}"
            + (f" ({copies} of them also reached {destination} as copies)" if copies else "")
        )

    def declare(self, queue: str, arguments: dict[str, Any]) -> None:
        self.channel.queue_declare(queue, durable=True, arguments=arguments)

    def bind(self, queue: str, keys: tuple[str, ...]) -> None:
        for key in keys:
            self.channel.queue_bind(queue, topology.EXCHANGE, key)

    def unbind(self, queue: str, keys: tuple[str, ...]) -> None:
        for key in keys:
            self.channel.queue_unbind(queue, topology.EXCHANGE, key)

    def exists(self, queue: str) -> bool:
        return passive_declare(self.connection, queue) is not None

    def delete(self, queue: str) -> None:
        """Delete ``queue`` once it is empty and unused (quorum queues refuse ``if-empty`` and
        ``if-unused``, so this checks first; nothing routes to it any more by then)."""
        declared = passive_declare(self.connection, queue)
        if declared is None:
            return
        if declared.message_count or declared.consumer_count:
            raise MigrationStopped(
                f"{queue} was not deleted: it holds {declared.message_count} message(s) and "
                f"{declared.consumer_count} consumer(s); stop them and run the migration again"
            )
        self.channel.queue_delete(queue)


def _is_empty(declared: Any) -> bool:
    """Whether a passive declare's answer says no message is ready (or the queue is gone)."""
    return declared is None or declared.message_count == 0


def _moved(method: Any, properties: Any) -> Any:
    """The properties a message is moved with: a redelivered one may be a copy (of a batch
    confirmed before an interrupted run could ack it), and says so to the worker."""
    if not method.redelivered:
        return properties
    moved = copy.copy(properties)
    moved.headers = {**(properties.headers or {}), POSSIBLE_DUPLICATE_HEADER: True}
    return moved
