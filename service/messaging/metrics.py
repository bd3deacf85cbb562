"""Prometheus families of the relay and the worker, read off their state at scrape time.

Nothing here runs on the publish or consume path: the collectors read the relay's running
totals and leases, and the worker's DLQ depth (one passive declare, cached).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.messaging import topology
from service.messaging.connection import open_blocking
from service.messaging.publish.relay import OutboxRelay
from service.ops.platform_metrics import READ_EVERY_SECONDS, CachedReading


class RelayCollector(Collector):
    """``fintegrate_relay_published_total{result}`` and ``fintegrate_relay_partitions_owned``."""

    def __init__(self, relay: OutboxRelay) -> None:
        self._relay = relay

    def describe(self) -> Iterable[Metric]:
        return self._families(None)

    def collect(self) -> Iterable[Metric]:
        return self._families(self._relay)

    @staticmethod
    def _families(relay: OutboxRelay | None) -> list[Metric]:
        published = CounterMetricFamily(
            "fintegrate_relay_published",
            "Publish attempts recorded by this relay, by result (published, failed, or fenced: "
            "the lease was lost before the outcome was recorded)",
            labels=["result"],
        )
        owned = GaugeMetricFamily(
            "fintegrate_relay_partitions_owned", "Outbox partitions this relay holds now"
        )
        if relay is not None:
            totals = relay.totals
            for result, count in (
                ("published", totals.published),
                ("failed", totals.failed),
                ("fenced", totals.fenced),
            ):
                published.add_metric([result], count)
            owned.add_metric([], len(relay.leases.tenure().tokens))
        return [published, owned]


class DlqCollector(Collector):
    """``fintegrate_dlq_messages{consumer}``: the tenant's dead-letter queue depth, cached."""

    def __init__(
        self, rabbitmq_url: str, consumer_name: str, max_age: float = READ_EVERY_SECONDS
    ) -> None:
        self._consumer = consumer_name
        self._reading = CachedReading(
            lambda: (float(dlq_depth(rabbitmq_url, consumer_name)),), max_age
        )

    def describe(self) -> Iterable[Metric]:
        return [self._family(None)]

    def collect(self) -> Iterable[Metric]:
        return [self._family(self._reading.value())]

    def _family(self, reading: tuple[float, ...] | None) -> Metric:
        family = GaugeMetricFamily(
            "fintegrate_dlq_messages",
            "Messages in the tenant's dead-letter queue",
            labels=["consumer"],
        )
        if reading is not None:
            family.add_metric([self._consumer], reading[0])
        return family


def dlq_depth(rabbitmq_url: str, consumer_name: str) -> int:
    """Messages ready in the tenant's DLQ (a passive declare on a short connection)."""
    connection = open_blocking(rabbitmq_url)
    try:
        declared = connection.channel().queue_declare(
            topology.dlq_name(consumer_name), passive=True
        )
        return int(declared.method.message_count)
    finally:
        if connection.is_open:
            connection.close()
