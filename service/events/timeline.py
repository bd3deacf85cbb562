"""The life of one event as a timeline (``fintegrate events trace``): where it is and why.

Built from what the platform records: the event row (creation, request id, trace context,
publish and delivery bookkeeping), the counted failed publish attempts per relay
(``event_publish_failures``), the receipts, and, while it is not delivered, its neighbours
in its aggregate's sequence (an event waits for the ones before it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Row

from service.events import outbox, repository


@dataclass
class Step:
    """One thing that happened to the event (``at`` None: not happened yet)."""

    step: str
    detail: str
    at: datetime | None = None
    since_previous_seconds: float | None = None


@dataclass
class Timeline:
    """The event's steps in time order, where it is now, and its neighbours when waiting."""

    event_id: str
    consumer_id: str
    customer_id: str | None
    event_type: str
    sequence: int
    state: str
    steps: list[Step] = field(default_factory=list)
    neighbours: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def event_timeline(connection: Connection, event_id: UUID) -> Timeline | None:
    """The timeline of any tenant's event (operators only); None when there is no such event."""
    event = repository.traced_event(connection, event_id)
    if event is None:
        return None
    steps = [created_step(event)]
    steps += [failure_step(row) for row in outbox.publish_failures(connection, event_id)]
    if event.published_at is not None:
        tries = event.publish_try_count
        steps.append(
            Step("published", f"confirmed by RabbitMQ after {tries} attempt(s)", event.published_at)
        )
    steps += [receipt_step(row) for row in repository.event_receipts(connection, event_id)]
    timeline = Timeline(
        event_id=str(event.event_id),
        consumer_id=str(event.consumer_id),
        customer_id=str(event.customer_id) if event.customer_id else None,
        event_type=event.event_type,
        sequence=int(event.sequence),
        state=current_state(event),
        steps=in_time_order(steps),
    )
    if event.deliver_status != "delivered":
        neighbours = repository.aggregate_neighbours(connection, event)
        timeline.neighbours = [neighbour(row) for row in neighbours]
        timeline.steps.append(waiting_step(event, neighbours))
    return timeline


def created_step(event: Row[Any]) -> Step:
    request_id = (event.metadata or {}).get("request_id")
    parts = [f"by {event.source_service or 'unknown'}"]
    if request_id:
        parts.append(f"request {request_id}")
    if event.traceparent:
        parts.append(f"trace {event.traceparent.split('-')[1]}")
    return Step("created", ", ".join(parts), event.created_at)


def failure_step(row: Row[Any]) -> Step:
    who = publisher_name(row)
    times = f"{row.attempts} attempt(s), last at {row.last_failed_at.isoformat()}"
    return Step("publish failed", f"{who}: {row.reason} ({times})", row.first_failed_at)


def publisher_name(row: Row[Any]) -> str:
    """``relay <id> (host pid N)`` while that relay is alive, else its recorded name."""
    if row.relay_id.startswith("api "):
        return row.relay_id
    where = f" ({row.hostname} pid {row.pid})" if row.hostname else ""
    return f"relay {row.relay_id}{where}"


def receipt_step(row: Row[Any]) -> Step:
    return Step(f"receipt {row.status}", row.detail or "", row.received_at)


def current_state(event: Row[Any]) -> str:
    """Where the event is, in one phrase."""
    if event.deliver_status == "delivered":
        return "delivered"
    if event.deliver_status == "failed":
        return "failed in the tenant's handler (dead-lettered)"
    if event.publish_status == "pending":
        return "waiting to be published"
    return "published, waiting for the tenant's worker"


def waiting_step(event: Row[Any], neighbours: Sequence[Row[Any]]) -> Step:
    """What the event waits for now (no time: it has not happened)."""
    blocker = next((row for row in neighbours if row.role == "first pending before it"), None)
    if blocker is not None:
        why = f": {blocker.publish_failure_reason}" if blocker.publish_failure_reason else ""
        return Step(
            "held back",
            f"behind event {blocker.event_id} (sequence {blocker.sequence}, still pending{why})",
        )
    if event.publish_status == "pending":
        reason = (
            f"; last failure: {event.publish_failure_reason}"
            if event.publish_failure_reason
            else ""
        )
        return Step(
            "waiting", f"next publish attempt due at {event.next_attempt_at.isoformat()}{reason}"
        )
    if event.deliver_status == "failed":
        return Step(
            "dead-lettered", "see `fintegrate queues status`; replay with `queues replay-dlq`"
        )
    return Step("waiting", "in the tenant's queue: is `fintegrate consume` running?")


def neighbour(row: Row[Any]) -> dict[str, Any]:
    return {
        "role": row.role,
        "event_id": str(row.event_id),
        "sequence": int(row.sequence),
        "event_type": row.event_type,
        "publish_status": row.publish_status,
        "deliver_status": row.deliver_status,
        "publish_failure_reason": row.publish_failure_reason,
    }


def in_time_order(steps: list[Step]) -> list[Step]:
    """The steps sorted by time, each with the seconds since the one before."""
    ordered = sorted(steps, key=lambda step: step.at.timestamp() if step.at else float("inf"))
    previous: datetime | None = None
    for step in ordered:
        if step.at is not None and previous is not None:
            step.since_previous_seconds = round((step.at - previous).total_seconds(), 3)
        previous = step.at or previous
    return ordered
