"""The plan of a queue migration (``migration.py``), read from the broker: what differs,
what the queue and its temporary queues hold, and the steps a run would take."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pika

from service.config import Settings
from service.messaging import topology
from service.messaging.connection import open_blocking
from service.messaging.operate.inspection import ArgumentDrift, inspect_tenant
from service.messaging.operate.queue_ops import passive_declare


@dataclass(frozen=True)
class MigrationTarget:
    """One queue and what it must become."""

    queue: str
    arguments: dict[str, Any]
    bindings: tuple[str, ...]
    keep_order: bool  # a main queue: reroute unbind-first (migration.py says why)
    limit_setting: str  # the setting its x-max-length comes from

    @property
    def stash(self) -> str:
        return topology.migration_stash_name(self.queue)

    @property
    def inbox(self) -> str:
        return topology.migration_inbox_name(self.queue)


@dataclass
class QueueMigration:
    """The plan for one queue, read from the broker, and what a run did."""

    consumer_name: str
    target: MigrationTarget
    exists: bool
    drift: list[ArgumentDrift]
    ready: int = 0
    consumers: int = 0
    stashed: int | None = None  # None: no stash queue
    inbox: int | None = None  # None: no inbox queue
    moved: int = 0
    result: str = ""

    @property
    def needed(self) -> bool:
        """Whether the queue differs or a previous run left temporary queues."""
        return bool(self.drift) or self.stashed is not None or self.inbox is not None

    @property
    def held(self) -> int:
        """Messages the queue and its temporary queues hold now."""
        return self.ready + (self.stashed or 0) + (self.inbox or 0)

    def refusal(self) -> str | None:
        """Why a run must not start: more messages than the new ``x-max-length`` would
        take (a full queue refuses them, a full DLQ would drop its oldest)."""
        limit = self.target.arguments.get("x-max-length")
        if not self.needed or limit is None or self.held <= limit:
            return None
        return (
            f"{self.target.queue} holds {self.held} message(s), more than its new "
            f"x-max-length {limit}: let them be consumed (or replayed) first, or raise "
            f"{self.target.limit_setting}; nothing was changed"
        )

    def steps(self) -> list[str]:
        """What a run would do, in operator words."""
        queue, target = self.target.queue, self.target
        refusal = self.refusal()
        if refusal:
            return [f"refused: {refusal}"]
        steps = []
        if self.exists and self.drift:
            steps += [
                f"route new messages of {queue} to {target.inbox}",
                f"move {self.ready} message(s) from {queue} to {target.stash}, in order",
                f"delete {queue}",
            ]
        if not self.exists or self.drift:
            steps.append(f"declare {queue} with the expected arguments")
        if self.stashed is not None or (self.exists and self.drift):
            stashed = (self.stashed or 0) + (self.ready if self.drift else 0)
            steps.append(f"move {stashed} message(s) from {target.stash} back to {queue}")
        if self.inbox is not None or (self.exists and self.drift):
            steps.append(f"route new messages to {queue} again after those {target.inbox} got")
        return steps

    def as_dict(self) -> dict[str, Any]:
        return {
            "consumer_name": self.consumer_name,
            "queue": self.target.queue,
            "exists": self.exists,
            "drift": [vars(item) for item in self.drift],
            "ready": self.ready,
            "consumers": self.consumers,
            "stash": self.stashed,
            "inbox": self.inbox,
            "steps": self.steps() if self.needed else [],
            "moved": self.moved,
            "result": self.result or ("would migrate" if self.needed else "up to date"),
        }


def migration_targets(expected: topology.TenantTopology) -> list[MigrationTarget]:
    """The tenant's DLQ, then its main queue (dead letters always find a home first)."""
    dlq = MigrationTarget(
        expected.dlq,
        expected.dlq_arguments,
        (expected.dlq_binding,),
        keep_order=False,
        limit_setting="FINTEGRATE_DLQ_MAX_LENGTH",
    )
    queue = MigrationTarget(
        expected.queue,
        expected.queue_arguments,
        expected.bindings,
        keep_order=True,
        limit_setting="FINTEGRATE_QUEUE_MAX_LENGTH",
    )
    return [dlq, queue]


def plan_migration(settings: Settings, consumer_name: str) -> list[QueueMigration]:
    """What migrating the tenant's queues would do; reads only, changes nothing."""
    expected = topology.expected_topology(settings.queues, consumer_name)
    report = inspect_tenant(settings, consumer_name)
    connection = open_blocking(settings.broker.url)
    try:
        return [
            _plan_queue(connection, consumer_name, target, report.drift)
            for target in migration_targets(expected)
        ]
    finally:
        connection.close()


def _plan_queue(
    connection: pika.BlockingConnection,
    consumer_name: str,
    target: MigrationTarget,
    drift: list[ArgumentDrift],
) -> QueueMigration:
    live = passive_declare(connection, target.queue)
    stash = passive_declare(connection, target.stash)
    inbox = passive_declare(connection, target.inbox)
    return QueueMigration(
        consumer_name=consumer_name,
        target=target,
        exists=live is not None,
        drift=[item for item in drift if item.queue == target.queue],
        ready=live.message_count if live else 0,
        consumers=live.consumer_count if live else 0,
        stashed=None if stash is None else stash.message_count,
        inbox=None if inbox is None else inbox.message_count,
    )
