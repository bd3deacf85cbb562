"""Publish events in aggregate order and record what the broker said: one step for all.

The relay, ``POST /events/resend`` and ``POST /events/redeliver`` all publish through
``publish_runs`` and record through ``record_outcomes``.

A *run* is one aggregate's events in sequence order. Runs are published in *waves*: wave
``i`` carries the ``i``-th event of every run still going, and the next wave starts only
once the broker has confirmed (and routed) the whole wave. So an aggregate never has two
events in flight, an event is sent only after its predecessor is in the queue, and a
failure stops its own run only: its later events stay pending, other runs go on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Row

from service.events.outbox import mark_failed, mark_published, record_failures
from service.messaging.connection import BrokerUnavailable
from service.messaging.messages import event_from_row
from service.messaging.publish.publisher import (
    ConfirmingPublisher,
    PublishResult,
    outgoing_event,
)
from service.messaging.tracing import PublishSpans

Run = Sequence[Row[Any]]
RowGate = Callable[[Row[Any]], bool]  # may this row be published now (asked per publish)
# Prepares a wave just before it is sent: the rows to send (fresh payloads, the erasure
# fence), a row left out is held with its run.
WaveFilter = Callable[[list[Row[Any]]], list[Row[Any]]]
HeaderSource = Callable[[Row[Any]], dict[str, Any] | None]  # extra AMQP headers of a row


@dataclass
class PublishReport:
    """What one ordered publish did, row by row."""

    published: list[Row[Any]] = field(default_factory=list)
    failed: list[tuple[Row[Any], str]] = field(default_factory=list)
    held: int = 0  # not attempted: behind a failure in their run, or no longer ours
    broker_error: str | None = None
    nacked: set[str] = field(default_factory=set)  # event ids of the failures the broker nacked

    def restricted(self, keep: Callable[[Row[Any]], bool]) -> PublishReport:
        """The same report with only the rows ``keep`` accepts."""
        failed = [(row, reason) for row, reason in self.failed if keep(row)]
        return PublishReport(
            [row for row in self.published if keep(row)],
            failed,
            self.held,
            self.broker_error,
            self.nacked & {str(row.event_id) for row, _ in failed},
        )

    def is_nacked(self, row: Row[Any]) -> bool:
        return str(row.event_id) in self.nacked


def publish_runs(
    publisher: ConfirmingPublisher,
    runs: Sequence[Run],
    headers: HeaderSource | None = None,
    gate: RowGate | None = None,
    prepare: WaveFilter | None = None,
) -> PublishReport:
    """Publish ``runs`` wave by wave; a run stops at its first failure.

    ``headers`` gives each row's extra AMQP headers (resend marks every copy, the relay
    only those that may be duplicates).

    ``gate`` is asked right before each row's ``basic_publish`` (the relay's lease
    deadline); a row it refuses is not sent and ends its run. ``prepare`` gets each wave
    before it is sent and answers the rows to send (the erasure fence re-reads their
    payloads); a row it leaves out waits with its run. Raises BrokerUnavailable only when
    the broker cannot be reached before anything was sent.
    """
    report = PublishReport()
    active = [run for run in runs if run]
    position = 0
    while active:
        wave = [run[position] for run in active]
        try:
            results = _publish_wave(publisher, prepare(wave) if prepare else wave, headers, gate)
        except BrokerUnavailable as exc:
            if not report.published and not report.failed:
                raise
            report.broker_error = str(exc)
            report.held += sum(len(run) - position for run in active)
            return report
        going = []
        for run, row in zip(active, wave, strict=True):
            behind = len(run) - position - 1  # the run's events after this one
            result = results.get(str(row.event_id))
            if result is None or not result.sent:  # left out or withheld: it and its run wait
                report.held += 1 + behind
            elif not result.ok:
                report.failed.append((row, result.reason or "not confirmed"))
                if result.nacked:
                    report.nacked.add(str(row.event_id))
                report.held += behind
            else:
                report.published.append(row)
                if behind:
                    going.append(run)
        active = going
        position += 1
    return report


def record_outcomes(
    connection: Connection, report: PublishReport, max_backoff: float, publisher: str
) -> None:
    """Mark the confirmed rows published and the failed ones for a retry after backoff;
    count the failures against ``publisher`` (a relay id, ``api resend``, ...)."""
    mark_published(connection, report.published)
    mark_failed(connection, report.failed, max_backoff)
    record_failures(connection, report.failed, publisher)


def _publish_wave(
    publisher: ConfirmingPublisher,
    rows: list[Row[Any]],
    headers: HeaderSource | None,
    gate: RowGate | None,
) -> dict[str, PublishResult]:
    """event_id -> the broker's answer (or why it was not sent)."""
    outcome: dict[str, PublishResult] = {}
    sendable = []
    for row in rows:
        if row.consumer_name is None:
            reason = f"consumer {row.consumer_id} does not exist"
            outcome[str(row.event_id)] = PublishResult(False, reason)
        else:
            sendable.append(row)
    spans = PublishSpans()  # tracing: a send span per message, its traceparent in the header
    messages = [
        outgoing_event(event_from_row(row), spans.headers(row, headers(row) if headers else None))
        for row in sendable
    ]
    sendable_gate = None if gate is None else (lambda index: gate(sendable[index]))
    try:
        results = publisher.publish_batch(messages, sendable_gate)
    except BaseException:
        spans.abandon("broker unavailable")
        raise
    for row, result in zip(sendable, results, strict=True):
        outcome[str(row.event_id)] = result
        spans.finish(str(row.event_id), None if result.ok else (result.reason or "not confirmed"))
    return outcome
