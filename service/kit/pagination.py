"""Opaque keyset cursors over ``(timestamp, id)`` and page assembly."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

from service.kit.errors import BadRequest

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
INVALID_CURSOR = "Invalid cursor; pass next_cursor from the previous page unchanged"

T = TypeVar("T")


@dataclass(frozen=True)
class Cursor:
    """The position after which the next page starts."""

    at: datetime
    id: UUID


def encode_cursor(at: datetime, row_id: UUID) -> str:
    """An opaque, URL-safe cursor for the row ``(at, row_id)``."""
    raw = json.dumps([at.isoformat(), str(row_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> Cursor | None:
    """The position encoded in ``cursor``; BadRequest when it was not made by us."""
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, row_id = json.loads(raw)
        decoded = Cursor(at=datetime.fromisoformat(at), id=UUID(row_id))
    except (binascii.Error, ValueError, TypeError, AttributeError) as exc:
        raise BadRequest(INVALID_CURSOR) from exc
    if decoded.at.tzinfo is None:
        raise BadRequest(INVALID_CURSOR)
    return decoded


def encode_aggregate_cursor(aggregate_id: UUID, sequence: int) -> str:
    """An opaque cursor for the position ``(aggregate_id, sequence)`` (republish chunks)."""
    raw = json.dumps(["a", str(aggregate_id), int(sequence)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_aggregate_cursor(cursor: str | None) -> dict[str, Any]:
    """Bound parameters ``after_aggregate`` / ``after_sequence``; BadRequest when foreign."""
    if cursor is None:
        return {"after_aggregate": None, "after_sequence": None}
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        tag, aggregate_id, sequence = json.loads(raw)
        if tag != "a" or isinstance(sequence, bool) or not isinstance(sequence, int):
            raise ValueError("not an aggregate cursor")
        return {"after_aggregate": UUID(aggregate_id), "after_sequence": sequence}
    except (binascii.Error, ValueError, TypeError, AttributeError) as exc:
        raise BadRequest(INVALID_CURSOR) from exc


def cursor_params(cursor: Cursor | None) -> dict[str, Any]:
    """Bound parameters ``after_at`` / ``after_id`` for a keyset ``WHERE`` clause."""
    if cursor is None:
        return {"after_at": None, "after_id": None}
    return {"after_at": cursor.at, "after_id": cursor.id}


def build_page(
    rows: Sequence[T], limit: int, position: Callable[[T], tuple[datetime, UUID]]
) -> dict[str, Any]:
    """``{items, next_cursor, count}`` from up to ``limit + 1`` fetched rows."""
    items = list(rows[:limit])
    next_cursor = encode_cursor(*position(items[-1])) if len(rows) > limit else None
    return {"items": items, "next_cursor": next_cursor, "count": len(items)}
