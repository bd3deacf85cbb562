"""``fintegrate bench relay --fairness``: a quiet tenant's latency beside a loud backlog.

Each phase gives fresh tenants in the bench's database: a loud one with a backlog of
``events`` over ``customers`` customers, drained by an in-process relay, and a quiet one
writing ``quiet_rate`` events/s meanwhile, one per commit. Reported per phase: the loud
backlog's drain rate and the quiet tenant's commit -> confirmed publish (p50/p99). The
baseline is the relay's previous selection, oldest due head first across all tenants
(with the index it walked, built for its phase only), in alternating rounds. The verdicts
are the median of the per-round drain ratios and the quiet p99 of every per-tenant phase.
A phase whose quiet events were not all published is invalid.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, Row, create_engine

from service.bench import statements
from service.bench.figures import Progress, Ratio, ceiling, rate_ratio, ratio_over_rounds
from service.bench.servers import alternating
from service.config import Settings
from service.events import outbox
from service.kit.db import create_db_engine
from service.messaging.operate.provisioning import provision_consumer_queues
from service.messaging.publish import relay as relay_module
from service.messaging.publish.relay import OutboxRelay

SELECTIONS = ("per_tenant", "previous")
DRAIN_TARGET = 0.9  # minimum per_tenant/previous drain rate, median of rounds
QUIET_P99_TARGET_MS = 1000.0
SETTLE_SECONDS = 60.0


@dataclass(frozen=True)
class FairnessOptions:
    """The loud backlog, the quiet tenant's rate and the rounds."""

    events: int = 15_000
    customers: int = 1_000
    quiet_rate: float = 20.0
    batch_size: int = 200
    rounds: int = 3


@dataclass(frozen=True)
class FairnessPhase:
    """One selection drained one loud backlog beside the quiet writer."""

    selection: str
    loud_events: int
    loud_published: int
    seconds: float
    drain_rate: float  # loud_published / seconds
    quiet_written: int
    quiet_published: int
    quiet_p50_ms: float
    quiet_p99_ms: float

    @property
    def valid(self) -> bool:
        return (
            self.loud_published == self.loud_events
            and self.quiet_published == self.quiet_written > 0
        )


@dataclass
class FairnessReport:
    """The rounds, the drain ratio and the quiet tenant's p99 verdict."""

    options: FairnessOptions
    rounds: list[dict[str, FairnessPhase]] = field(default_factory=list)

    def ratio(self) -> Ratio | None:
        per_round = [
            rate_ratio(r["per_tenant"].drain_rate, r["previous"].drain_rate) for r in self.rounds
        ]
        return ratio_over_rounds("previous", per_round, DRAIN_TARGET) if per_round else None

    def quiet_p99s(self) -> list[float]:
        return [r["per_tenant"].quiet_p99_ms for r in self.rounds]

    def invalid_phases(self) -> list[str]:
        return [
            f"fairness round {index + 1} {phase.selection}"
            for index, phases in enumerate(self.rounds)
            for phase in phases.values()
            if not phase.valid
        ]

    @property
    def met(self) -> bool:
        ratio = self.ratio()
        p99s = self.quiet_p99s()
        return ratio is not None and ratio.met and max(p99s) <= QUIET_P99_TARGET_MS

    def as_dict(self) -> dict[str, object]:
        ratio = self.ratio()
        p99s = self.quiet_p99s()
        return {
            **asdict(self.options),
            "rounds": [{s: asdict(p) for s, p in phases.items()} for phases in self.rounds],
            "drain_ratio": None if ratio is None else ratio.as_dict(),
            "quiet_p99_ms": ceiling(p99s, QUIET_P99_TARGET_MS),
            "met": self.met,
        }


def run(settings: Settings, options: FairnessOptions, progress: Progress) -> FairnessReport:
    """Both selections once per round, the order alternating."""
    report = FairnessReport(options)
    for number, order in enumerate(alternating(len(SELECTIONS), options.rounds), start=1):
        phases = {}
        for index in order:
            selection = SELECTIONS[index]
            if selection == "previous":
                with previous_selection(settings):
                    phases[selection] = fairness_phase(settings, options, selection)
            else:
                phases[selection] = fairness_phase(settings, options, selection)
            progress(f"fairness round {number}/{options.rounds} {describe(phases[selection])}")
        report.rounds.append({selection: phases[selection] for selection in SELECTIONS})
    return report


def describe(phase: FairnessPhase) -> str:
    """One line for people."""
    return (
        f"{phase.selection:<10} drain {phase.drain_rate:8,.0f} events/s; quiet commit -> "
        f"published p50 {phase.quiet_p50_ms:,.1f} ms, p99 {phase.quiet_p99_ms:,.1f} ms "
        f"({phase.quiet_published}/{phase.quiet_written})"
    )


def fairness_phase(settings: Settings, options: FairnessOptions, selection: str) -> FairnessPhase:
    """Drain a fresh loud tenant's backlog beside a fresh quiet writer."""
    engine = create_engine(settings.database_url)  # no statement timeout for the bulk seed
    loud, quiet = new_tenant(settings, engine, "loud"), new_tenant(settings, engine, "quiet")
    with engine.begin() as connection:
        params = {"consumer_id": loud, "count": options.events, "customers": options.customers}
        connection.execute(statements.BACKLOG, {**params, "salt": loud})
    with engine.connect() as connection:
        connection.execute(statements.ANALYZE)
    stop = threading.Event()
    relay_engine = create_db_engine(settings, pool_size=2)
    relay = OutboxRelay(settings, relay_engine, stop, batch_size=options.batch_size)
    relay_thread = threading.Thread(target=relay.run, name="bench-relay", daemon=True)
    with QuietWriter(settings, quiet, options.quiet_rate) as writer:
        started = time.perf_counter()
        relay_thread.start()
        while pending_of(engine, loud):
            time.sleep(0.05)
        seconds = time.perf_counter() - started
    deadline = time.monotonic() + SETTLE_SECONDS
    while pending_of(engine, quiet) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    relay_thread.join(SETTLE_SECONDS)
    relay_engine.dispose()
    with engine.connect() as connection:
        lag = connection.execute(statements.PUBLISH_LAG_OF_EVENTS, {"event_ids": writer.ids}).one()
    published = options.events - pending_of(engine, loud)
    engine.dispose()
    return FairnessPhase(
        selection,
        options.events,
        published,
        seconds,
        published / max(seconds, 1e-9),
        len(writer.ids),
        int(lag.n),
        float(lag.p50 or 0),
        float(lag.p99 or 0),
    )


def pending_of(engine: Engine, consumer_id: str) -> int:
    with engine.connect() as connection:
        return int(connection.execute(statements.PENDING_OF, {"c": consumer_id}).scalar_one())


def new_tenant(settings: Settings, engine: Engine, prefix: str) -> str:
    """A provisioned consumer; its id."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with engine.begin() as connection:
        consumer_id = connection.execute(statements.NEW_CONSUMER, {"name": name}).scalar_one()
    provision_consumer_queues(settings, name)
    return str(consumer_id)


class QuietWriter:
    """A quiet tenant: one event per commit at ``rate``/s on its own thread until stopped."""

    def __init__(self, settings: Settings, consumer_id: str, rate: float) -> None:
        self.ids: list[str] = []
        self._settings, self._consumer_id, self._rate = settings, consumer_id, rate
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._write, name="bench-quiet-writer")

    def __enter__(self) -> QuietWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _write(self) -> None:
        engine = create_db_engine(self._settings, pool_size=1)
        started = time.monotonic()
        params = {"consumer_id": self._consumer_id}
        while not self._stop.wait(
            max(0.0, started + len(self.ids) / self._rate - time.monotonic())
        ):
            with engine.begin() as connection:
                event_id = connection.execute(statements.QUIET_EVENT, params).scalar_one()
                self.ids.append(str(event_id))
        engine.dispose()


def previous_due_heads(
    connection: Connection,
    partitions: Sequence[int],
    partition_count: int,
    limit: int,
    held: Sequence[str] = (),
    after: str | None = None,
    known: dict[str, int] | None = None,
) -> list[Row[Any]]:
    """The selection before fairness: the oldest due heads across all tenants."""
    connection.execute(outbox.PLANNER_HINTS)
    params = {"partitions": list(partitions), "partition_count": partition_count, "limit": limit}
    return list(connection.execute(statements.PREVIOUS_DUE_HEADS, params).all())


@contextmanager
def previous_selection(settings: Settings) -> Iterator[None]:
    """The relay reads with the previous oldest-first walk (and its index) meanwhile.

    The relay module's ``due_heads`` is swapped for the phase: the baseline is the same
    relay with only its selection changed.
    """
    engine = create_engine(settings.database_url)
    with engine.begin() as connection:
        connection.execute(statements.PREVIOUS_WALK_INDEX)
    fair = relay_module.due_heads
    relay_module.due_heads = previous_due_heads
    try:
        yield
    finally:
        relay_module.due_heads = fair
        with engine.begin() as connection:
            connection.execute(statements.DROP_PREVIOUS_WALK_INDEX)
        engine.dispose()
