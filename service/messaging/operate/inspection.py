"""Compare a tenant's live queues and bindings with the expected topology, without crashing.

A queue declared with different arguments makes RabbitMQ close the channel with 406
PRECONDITION_FAILED. Inspection therefore reads the management API when it is configured
(every argument and binding), and otherwise probes with declares on throwaway channels
(one differing argument per queue, bindings unknown).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions

from service.config import Settings
from service.messaging import topology
from service.messaging.connection import open_blocking, vhost_of
from service.messaging.operate.management import ManagementClient

PRECONDITION_FAILED = 406
MAX_UNEXPECTED_ARGUMENTS = 8  # live arguments the expected set lacks, probed at most
INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<arg>[^']+)'.*?received (?:the value )?'?(?P<expected>[^' ]*)'?"
    r".*?current is (?:the value )?'?(?P<live>[^' ]*)'?"
)


@dataclass(frozen=True)
class ArgumentDrift:
    """One argument whose live value differs from the expected one (None = absent)."""

    queue: str
    argument: str
    live: Any
    expected: Any


@dataclass
class TopologyReport:
    """How a tenant's live topology differs from SPEC 5."""

    consumer_name: str
    queue: str
    dlq: str
    queue_exists: bool = False
    dlq_exists: bool = False
    drift: list[ArgumentDrift] = field(default_factory=list)
    missing_bindings: list[str] = field(default_factory=list)
    extra_bindings: list[str] = field(default_factory=list)
    bindings_checked: bool = False
    migration_queues: list[str] = field(default_factory=list)  # a stopped migration's

    @property
    def ok(self) -> bool:
        return (
            self.queue_exists
            and self.dlq_exists
            and not self.drift
            and not self.missing_bindings
            and not self.extra_bindings
            and not self.migration_queues
        )

    def advice(self) -> list[str]:
        """What to do about each kind of difference, in operator words."""
        return advice_for(self)

    def as_dict(self) -> dict[str, Any]:
        return {
            "consumer_name": self.consumer_name,
            "queue": self.queue,
            "dlq": self.dlq,
            "ok": self.ok,
            "queue_exists": self.queue_exists,
            "dlq_exists": self.dlq_exists,
            "drift": [vars(item) for item in self.drift],
            "missing_bindings": self.missing_bindings,
            "extra_bindings": self.extra_bindings,
            "bindings_checked": self.bindings_checked,
            "migration_queues": self.migration_queues,
            "advice": self.advice(),
        }


def advice_for(report: TopologyReport) -> list[str]:
    name = report.consumer_name
    if report.migration_queues:
        return [
            f"a migration of {name}'s queues stopped half way (left "
            f"{', '.join(report.migration_queues)}; new events wait there): run "
            f"`fintegrate queues provision {name} --migrate` to finish it"
        ]
    lines = []
    if not report.queue_exists or not report.dlq_exists or report.missing_bindings:
        lines.append(f"run `fintegrate queues provision {name}` to declare what is missing")
    for item in report.drift:
        lines.append(f"{item.queue}: {item.argument} is {item.live!r}, expected {item.expected!r}")
    if report.drift:
        lines.append(
            "RabbitMQ cannot change queue arguments in place: stop the tenant's worker, then "
            f"`fintegrate queues provision {name} --migrate --dry-run` shows the steps and "
            f"`fintegrate queues provision {name} --migrate` moves the queue, keeping every "
            "message in order (docs/operators.md)"
        )
    for key in report.extra_bindings:
        lines.append(
            f"{report.queue} has an unexpected binding {key!r} (it can loop dead letters "
            "back or leak other events): remove it in the management UI or with "
            f"`rabbitmqadmin delete binding source={topology.EXCHANGE} "
            f"destination={report.queue} destination_type=queue properties_key={key}`"
        )
    return lines


def inspect_tenant(settings: Settings, consumer_name: str) -> TopologyReport:
    """The differences between the live and the expected topology of one tenant."""
    expected = topology.expected_topology(settings.queues, consumer_name)
    if settings.broker.management_url:
        with ManagementClient(
            settings.broker.management_url, vhost_of(settings.broker.url)
        ) as client:
            return inspect_with_management(client, expected)
    connection = open_blocking(settings.broker.url)
    try:
        return inspect_with_declares(connection, expected)
    finally:
        connection.close()


def inspect_with_management(
    client: ManagementClient, expected: topology.TenantTopology
) -> TopologyReport:
    """Full comparison: every argument, durability and every binding."""
    report = _empty_report(expected)
    report.migration_queues = [
        queue for queue in migration_queue_names(expected) if client.queue(queue) is not None
    ]
    for name, arguments in _queues(expected):
        live = client.queue(name)
        if live is None:
            continue
        _mark_exists(report, name)
        report.drift.extend(argument_drift(name, live.get("arguments") or {}, arguments))
        if not live.get("durable", False):
            report.drift.append(ArgumentDrift(name, "durable", False, True))
    report.bindings_checked = True
    _compare_bindings(report, client, expected)
    return report


def argument_drift(
    queue: str, live: dict[str, Any], expected: dict[str, Any]
) -> list[ArgumentDrift]:
    """Each argument present on one side only or with different values."""
    names = sorted(set(live) | set(expected))
    return [
        ArgumentDrift(queue, name, live.get(name), expected.get(name))
        for name in names
        if live.get(name) != expected.get(name)
    ]


def inspect_with_declares(
    connection: pika.BlockingConnection, expected: topology.TenantTopology
) -> TopologyReport:
    """Existence by passive declare; a differing argument by the broker's 406 text."""
    report = _empty_report(expected)
    report.migration_queues = migration_leftovers(connection, expected)
    for name, arguments in _queues(expected):
        if not _exists(connection, name):
            continue
        _mark_exists(report, name)
        report.drift.extend(probe_drift(connection, name, arguments))
    return report


def probe_drift(
    connection: pika.BlockingConnection, queue: str, arguments: dict[str, Any]
) -> list[ArgumentDrift]:
    """Every differing argument of an existing ``queue``, from the broker's 406 answers.

    The broker names one difference per refused declare (on a throwaway channel), so each
    found live value is put into the next probe until the declare is accepted: it then
    matches the live queue exactly and changes nothing.
    """
    probe, found = dict(arguments), []
    for _ in range(len(arguments) + MAX_UNEXPECTED_ARGUMENTS):
        channel = connection.channel()
        try:
            channel.queue_declare(queue, durable=True, arguments=probe)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != PRECONDITION_FAILED:
                raise
            item = drift_from_reply(queue, exc.reply_text, arguments)
            found.append(item)
            if not item.argument.startswith("x-") or item.argument in probe_seen(found):
                break  # durability, or an answer this loop cannot follow
            _take_live_value(probe, item)
            continue
        channel.close()
        break
    return found


def probe_seen(found: list[ArgumentDrift]) -> set[str]:
    """Arguments reported before the last one (a repeat means the probe is not converging)."""
    return {item.argument for item in found[:-1]}


def _take_live_value(probe: dict[str, Any], item: ArgumentDrift) -> None:
    if item.live is None:
        probe.pop(item.argument, None)
    else:
        probe[item.argument] = item.live


def drift_from_reply(
    queue: str, reply_text: str, arguments: dict[str, Any] | None = None
) -> ArgumentDrift:
    """Parse ``inequivalent arg 'x' ... received 'a' ... current is 'b'`` (or ``none``)."""
    match = INEQUIVALENT.search(reply_text)
    if match is None:
        return ArgumentDrift(queue, "unknown", reply_text, "the SPEC arguments")
    live = _typed(match["live"])
    expected = (arguments or {}).get(match["arg"], _typed(match["expected"]))
    return ArgumentDrift(queue, match["arg"], live, expected)


def _typed(text: str) -> Any:
    """A value from a 406 text: None for ``none``, an int for digits, else the string."""
    if text in ("", "none"):
        return None
    return int(text) if text.lstrip("-").isdigit() else text


def migration_queue_names(expected: topology.TenantTopology) -> list[str]:
    """The temporary queues a migration of the tenant's queues uses."""
    return [
        name
        for queue in (expected.dlq, expected.queue)
        for name in (topology.migration_stash_name(queue), topology.migration_inbox_name(queue))
    ]


def migration_leftovers(
    connection: pika.BlockingConnection, expected: topology.TenantTopology
) -> list[str]:
    """The temporary queues of a migration that stopped half way (passive declares)."""
    return [name for name in migration_queue_names(expected) if _exists(connection, name)]


def _exists(connection: pika.BlockingConnection, queue: str) -> bool:
    channel = connection.channel()
    try:
        channel.queue_declare(queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return False
        raise
    channel.close()
    return True


def _queues(expected: topology.TenantTopology) -> list[tuple[str, dict[str, Any]]]:
    return [(expected.queue, expected.queue_arguments), (expected.dlq, expected.dlq_arguments)]


def _empty_report(expected: topology.TenantTopology) -> TopologyReport:
    return TopologyReport(expected.consumer_name, expected.queue, expected.dlq)


def _mark_exists(report: TopologyReport, queue: str) -> None:
    if queue == report.queue:
        report.queue_exists = True
    else:
        report.dlq_exists = True


def _compare_bindings(
    report: TopologyReport, client: ManagementClient, expected: topology.TenantTopology
) -> None:
    live = set(client.exchange_bindings(expected.queue)) if report.queue_exists else set()
    wanted = set(expected.bindings)
    report.missing_bindings = sorted(wanted - live)
    report.extra_bindings = sorted(live - wanted)
    dlq_live = set(client.exchange_bindings(expected.dlq)) if report.dlq_exists else set()
    if expected.dlq_binding not in dlq_live:
        report.missing_bindings.append(f"{expected.dlq} <- {expected.dlq_binding}")
