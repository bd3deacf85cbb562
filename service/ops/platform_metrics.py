"""The event platform's Prometheus families (SPEC 9), shared by the API, relay and worker.

Metric objects here are process-wide (one delivery histogram per process, whatever the
number of apps) and unregistered: each process adds them to the registry it serves
(``register_event_metrics``). Gauges that need a query are collectors with a cached read,
so a scrape costs at most one small query per ``READ_EVERY_SECONDS``.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from service.events import service as events_service
from service.kit.errors import first_line

log = logging.getLogger(__name__)

READ_EVERY_SECONDS = 10.0
DELIVERY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
WEBHOOK_RESULTS = ("succeeded", "retrying", "failed")  # an attempt's status (webhooks)

EVENT_DELIVERY_SECONDS = Histogram(
    "fintegrate_event_delivery_seconds",
    "Time from an event's creation to its first delivered receipt",
    buckets=DELIVERY_BUCKETS,
    registry=None,
)
WEBHOOK_ATTEMPTS = Counter(
    "fintegrate_webhook_attempts",
    "Webhook delivery attempts, by result",
    ["result"],
    registry=None,
)
for _result in WEBHOOK_RESULTS:  # every bounded series exists from the start, at 0
    WEBHOOK_ATTEMPTS.labels(_result)
_registered: weakref.WeakSet[CollectorRegistry] = weakref.WeakSet()
_registered_lock = threading.Lock()


def register_event_metrics(registry: CollectorRegistry) -> None:
    """Add the process-wide event families to ``registry`` (once per registry)."""
    with _registered_lock:
        if registry in _registered:
            return
        for metric in (EVENT_DELIVERY_SECONDS, WEBHOOK_ATTEMPTS):
            registry.register(metric)
        _registered.add(registry)


def observe_delivery(created_at: datetime, delivered_at: datetime) -> None:
    """One event delivered: creation to receipt, in seconds (never negative)."""
    EVENT_DELIVERY_SECONDS.observe(max(0.0, (delivered_at - created_at).total_seconds()))


class CachedReading:
    """The last value of ``read`` for ``max_age`` seconds; None while it fails."""

    def __init__(
        self,
        read: Callable[[], tuple[float, ...] | None],
        max_age: float = READ_EVERY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._value: tuple[float, ...] | None = None
        self._read_at = -max_age

    def value(self) -> tuple[float, ...] | None:
        with self._lock:
            now = self._clock()
            if self._value is None or now - self._read_at >= self._max_age:
                self._value = self._read_once()
                self._read_at = now
            return self._value

    def _read_once(self) -> tuple[float, ...] | None:
        try:
            return self._read()
        except Exception as exc:  # a scrape never fails: the family is absent this time
            log.warning("metrics reading failed: %s", first_line(exc))
            return None


class OutboxGauges(Collector):
    """``fintegrate_outbox_pending_events`` and ``..._oldest_pending_seconds``, cached.

    The count comes from the event counters, the age from a bounded walk of the pending
    index (``events.service.outbox_gauges``): never a scan of the event history.
    """

    def __init__(
        self, engine: Callable[[], Engine | None], max_age: float = READ_EVERY_SECONDS
    ) -> None:
        """``engine`` gives the process's engine (None before it exists: no samples)."""
        self._reading = CachedReading(lambda: _outbox_reading(engine()), max_age)

    def describe(self) -> Iterable[Metric]:
        return self._families(None)

    def collect(self) -> Iterable[Metric]:
        return self._families(self._reading.value())

    @staticmethod
    def _families(reading: tuple[float, ...] | None) -> list[Metric]:
        pending = GaugeMetricFamily(
            "fintegrate_outbox_pending_events", "Events written but not yet published"
        )
        oldest = GaugeMetricFamily(
            "fintegrate_outbox_oldest_pending_seconds",
            "Age of the oldest pending event (0 when none is pending)",
        )
        if reading is not None:
            pending.add_metric([], reading[0])
            oldest.add_metric([], reading[1])
        return [pending, oldest]


def _outbox_reading(engine: Engine | None) -> tuple[float, float] | None:
    if engine is None:
        return None
    with engine.begin() as connection:
        gauges = events_service.outbox_gauges(connection)
    return float(gauges.pending), float(gauges.oldest_seconds)
