"""``fintegrate bench relay``: the ordered relay draining a backlog against two baselines.

The backlog is ``events`` pending events of one tenant over ``customers`` customers. Each
round drains the same backlog with every side in turn, the order reversed every other
round: ``raw_pika`` (a BlockingChannel, one confirm per message, the messages built
beforehand and not timed), ``unordered`` (the relay's algorithm before per-aggregate
ordering: claim with row locks, one confirmed batch, mark) and ``ordered`` (``OutboxRelay``
in this process, leased and per-tenant fair). Between phases every event is pending again
and the queue empty. The verdicts are medians of per-round ratios ordered/baseline. A
phase that did not publish and route the whole backlog is invalid: its rate would flatter.

End-to-end latency (``relay_latency``) and the fairness run (``relay_fairness``) share the
options and the report.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sqlalchemy import create_engine

from service.bench import relay_fairness, relay_latency, relay_profile, stack, statements
from service.bench.figures import Progress, Ratio, rate_ratio, ratio_over_rounds
from service.bench.servers import alternating
from service.config import Settings
from service.kit.db import create_db_engine
from service.messaging import topology
from service.messaging.connection import open_blocking
from service.messaging.messages import event_from_row
from service.messaging.operate.provisioning import provision_consumer_queues
from service.messaging.publish.publisher import ConfirmingPublisher, outgoing_event
from service.messaging.publish.relay import OutboxRelay

SIDES = ("raw_pika", "unordered", "ordered")
TARGETS = {"unordered": 0.9, "raw_pika": 3.5}  # minimum ordered/baseline, median of rounds


@dataclass(frozen=True)
class RelayBenchOptions:
    """How to run the benchmark; the defaults are the published method."""

    events: int = 50_000
    customers: int = 1_000
    batch_size: int = 200
    rounds: int = 3
    drain: bool = True
    latency: relay_latency.LatencyOptions | None = field(
        default_factory=relay_latency.LatencyOptions
    )
    fairness: relay_fairness.FairnessOptions | None = None
    profile: Path | None = None  # one more ordered drain under cProfile, pstats here


@dataclass(frozen=True)
class DrainPhase:
    """One side drained the backlog once."""

    side: str
    backlog: int
    published: int
    queued: int
    seconds: float
    rate: float  # published / seconds

    @classmethod
    def of(cls, side: str, backlog: int, published: int, queued: int, seconds: float) -> DrainPhase:
        return cls(side, backlog, published, queued, seconds, published / max(seconds, 1e-9))

    @property
    def valid(self) -> bool:
        return self.published == self.backlog == self.queued


@dataclass
class RelayBenchReport:
    """Everything the run measured, with the verdicts."""

    events: int
    customers: int
    batch_size: int
    drain_rounds: list[dict[str, DrainPhase]] = field(default_factory=list)
    latency: relay_latency.LatencyReport | None = None
    fairness: relay_fairness.FairnessReport | None = None

    def ratios(self) -> list[Ratio]:
        """ordered/baseline per round, for each baseline."""
        return [
            ratio_over_rounds(
                name,
                [rate_ratio(r["ordered"].rate, r[name].rate) for r in self.drain_rounds],
                target,
            )
            for name, target in TARGETS.items()
            if self.drain_rounds
        ]

    def invalid_phases(self) -> list[str]:
        drains = [
            f"drain round {index + 1} {phase.side}"
            for index, phases in enumerate(self.drain_rounds)
            for phase in phases.values()
            if not phase.valid
        ]
        latency = [] if self.latency is None else self.latency.invalid_phases()
        fairness = [] if self.fairness is None else self.fairness.invalid_phases()
        return drains + latency + fairness

    @property
    def met(self) -> bool:
        verdicts = [ratio.met for ratio in self.ratios()]
        if self.latency is not None:
            verdicts.append(self.latency.met)
        if self.fairness is not None:
            verdicts.append(self.fairness.met)
        return all(verdicts) and not self.invalid_phases()

    def as_dict(self) -> dict[str, object]:
        return {
            "backlog": {"events": self.events, "customers": self.customers},
            "batch_size": self.batch_size,
            "drain_rounds": [
                {side: asdict(phase) for side, phase in phases.items()}
                for phases in self.drain_rounds
            ],
            "drain_ratios": [ratio.as_dict() for ratio in self.ratios()],
            "latency": None if self.latency is None else self.latency.as_dict(),
            "fairness": None if self.fairness is None else self.fairness.as_dict(),
            "invalid_phases": self.invalid_phases(),
            "met": self.met,
        }


def run_relay_bench(
    configured: Settings, options: RelayBenchOptions, progress: Progress = print
) -> RelayBenchReport:
    """The chosen parts on a fresh database and vhost (both gone afterwards)."""
    report = RelayBenchReport(options.events, options.customers, options.batch_size)
    overrides = {
        **stack.api_overrides(),
        "environment": "test",
        "relay_batch_size": options.batch_size,
    }
    with stack.isolated(configured, overrides) as settings:
        if options.fairness is not None:
            report.fairness = relay_fairness.run(settings, options.fairness, progress)
            return report
        if options.drain:
            report.drain_rounds = drain_rounds(settings, options, progress)
        if options.latency is not None:
            report.latency = relay_latency.run(settings, options.latency, progress)
    return report


def drain_rounds(
    settings: Settings, options: RelayBenchOptions, progress: Progress
) -> list[dict[str, DrainPhase]]:
    """Every side once per round on the same backlog, the order alternating.

    The backlog is made pending again before each phase but the first; at the end it is
    marked published and its queue purged, so the latency run starts with no backlog.
    """
    queue = seed_backlog(settings, options.events, options.customers)
    drains = {"raw_pika": raw_pika, "unordered": unordered, "ordered": ordered}
    rounds: list[dict[str, DrainPhase]] = []
    for number, order in enumerate(alternating(len(SIDES), options.rounds), start=1):
        phases: dict[str, DrainPhase] = {}
        for index in order:
            side = SIDES[index]
            if rounds or phases:
                reset_backlog(settings, queue)
            phases[side] = drains[side](settings, queue, options)
            progress(f"drain round {number}/{options.rounds} {describe(phases[side])}")
        rounds.append({side: phases[side] for side in SIDES})
    if options.profile is not None:
        reset_backlog(settings, queue)
        relay_profile.profiled(
            lambda: ordered(settings, queue, options).seconds, options.profile, progress
        )
    engine = create_engine(settings.database_url)
    with engine.begin() as connection:
        connection.execute(statements.SETTLE_BACKLOG)
    engine.dispose()
    stack.purge_queue(settings, queue)
    return rounds


def describe(phase: DrainPhase) -> str:
    """One line for people."""
    flaw = "" if phase.valid else f"  INVALID ({phase.published} published, {phase.queued} queued)"
    return f"{phase.side:<10} {phase.rate:9,.0f} events/s  {phase.seconds:6.2f} s{flaw}"


def seed_backlog(settings: Settings, count: int, customers: int) -> str:
    """One provisioned tenant with ``count`` pending events of ``customers``; its queue."""
    name = f"bench_{uuid.uuid4().hex[:8]}"
    engine = create_engine(settings.database_url)  # no statement timeout for the bulk seed
    with engine.begin() as connection:
        consumer_id = connection.execute(statements.NEW_CONSUMER, {"name": name}).scalar_one()
        params = {"consumer_id": consumer_id, "count": count, "customers": customers}
        connection.execute(statements.BACKLOG, {**params, "salt": name})
    with engine.connect() as connection:
        connection.execute(statements.ANALYZE)
    engine.dispose()
    return provision_consumer_queues(settings, name).queue


def reset_backlog(settings: Settings, queue: str) -> None:
    """Every event pending again and the queue empty: the next phase starts equal."""
    engine = create_engine(settings.database_url)
    with engine.begin() as connection:
        connection.execute(statements.RESET)
    with engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT").execute(
            statements.VACUUM_ANALYZE
        )
    engine.dispose()
    stack.purge_queue(settings, queue)


def queued(settings: Settings, queue: str) -> int:
    """Messages waiting in ``queue``."""
    connection = open_blocking(settings.rabbitmq_url)
    try:
        return int(connection.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        connection.close()


def pending(settings: Settings) -> int:
    engine = create_engine(settings.database_url)
    with engine.connect() as connection:
        count = int(connection.execute(statements.PENDING).scalar_one())
    engine.dispose()
    return count


def raw_pika(settings: Settings, queue: str, options: RelayBenchOptions) -> DrainPhase:
    """The same messages through a BlockingChannel, one confirm per message."""
    engine = create_engine(settings.database_url)
    with engine.connect() as connection:
        rows = connection.execute(statements.PENDING_ROWS).all()
    engine.dispose()
    messages = [outgoing_event(event_from_row(row)) for row in rows]
    connection = open_blocking(settings.rabbitmq_url)
    channel = connection.channel()
    channel.confirm_delivery()
    started = time.perf_counter()
    for message in messages:
        channel.basic_publish(
            topology.EXCHANGE, message.routing_key, message.body, message.properties, mandatory=True
        )
    seconds = time.perf_counter() - started
    connection.close()
    return DrainPhase.of("raw_pika", len(rows), len(messages), queued(settings, queue), seconds)


def unordered(settings: Settings, queue: str, options: RelayBenchOptions) -> DrainPhase:
    """The relay's cycle before ordering: claim with row locks, one confirmed batch, mark.

    It runs with the index its claim walked, built for this phase only.
    """
    backlog = pending(settings)
    engine = create_db_engine(settings, pool_size=1)
    with engine.begin() as connection:
        connection.execute(statements.PREVIOUS_WALK_INDEX)
    published = 0
    started = time.perf_counter()
    with ConfirmingPublisher(settings.rabbitmq_url) as publisher:
        while True:
            with engine.begin() as connection:
                connection.execute(statements.NO_SORT)
                limit = {"limit": options.batch_size}
                rows = connection.execute(statements.UNORDERED_CLAIM, limit).all()
                if not rows:
                    break
                results = publisher.publish_batch(
                    [outgoing_event(event_from_row(row)) for row in rows]
                )
                done = [str(r.event_id) for r, res in zip(rows, results, strict=True) if res.ok]
                connection.execute(statements.UNORDERED_MARK, {"event_ids": done})
                published += len(done)
            if not done:  # refused by the broker: the phase ends short, hence invalid
                break
    seconds = time.perf_counter() - started
    with engine.begin() as connection:
        connection.execute(statements.DROP_PREVIOUS_WALK_INDEX)
    engine.dispose()
    return DrainPhase.of("unordered", backlog, published, queued(settings, queue), seconds)


def ordered(settings: Settings, queue: str, options: RelayBenchOptions) -> DrainPhase:
    """``OutboxRelay`` in this process until nothing due is left."""
    backlog = pending(settings)
    engine = create_db_engine(settings, pool_size=2)
    relay = OutboxRelay(settings, engine, threading.Event(), batch_size=options.batch_size)
    started = time.perf_counter()
    drained = relay.drain()
    seconds = time.perf_counter() - started
    relay.close()
    engine.dispose()
    return DrainPhase.of("ordered", backlog, drained.published, queued(settings, queue), seconds)
