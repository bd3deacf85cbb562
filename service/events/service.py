"""Rules of the events read API: tenant-scoped listing and lookup."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from sqlalchemy import Connection

from service.errors import NotFound
from service.events import repository
from service.events.schemas import EventFilters, EventOut
from service.pagination import build_page, cursor_params, decode_cursor

EVENT_NOT_FOUND = "Event not found"


def list_events(
    connection: Connection,
    consumer_id: UUID,
    filters: EventFilters,
    cursor: str | None,
    limit: int,
) -> dict[str, Any]:
    """One page of the tenant's events, oldest first."""
    after = cursor_params(decode_cursor(cursor))
    rows = repository.list_events(connection, consumer_id, filters, after, limit + 1)
    events = [EventOut.model_validate(row._mapping) for row in rows]
    return build_page(events, limit, lambda event: (event.created_at, event.event_id))


def get_event(connection: Connection, consumer_id: UUID, event_id: UUID) -> EventOut:
    """One of the tenant's events; NotFound for a missing or foreign id alike."""
    row = repository.get_event(connection, consumer_id, event_id)
    if row is None:
        raise NotFound(EVENT_NOT_FOUND)
    return EventOut.model_validate(row._mapping)
