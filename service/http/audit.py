"""The audit log: every 5xx and every admin action, with the request id.

Each row is written in its own short transaction after the answer is decided; a failure
to write is logged and never changes the answer.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Engine, text

logger = logging.getLogger(__name__)

INSERT_AUDIT = text(
    """
    INSERT INTO audit_log
        (actor, action, request_id, consumer_id, method, path, status_code, detail_json)
    VALUES
        (:actor, :action, :request_id, :consumer_id, :method, :path, :status_code,
         CAST(:detail AS jsonb))
    """
)


@dataclass(frozen=True)
class AuditEntry:
    """One audit row: who did what, with which outcome."""

    actor: str
    action: str
    request_id: str | None = None
    consumer_id: UUID | None = None
    method: str | None = None
    path: str | None = None
    status_code: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def write_audit(engine: Engine | None, entry: AuditEntry) -> bool:
    """Insert ``entry``; False (and a log line) when it could not be written."""
    if engine is None:
        logger.error("audit row not written (no database engine): %s", entry)
        return False
    try:
        with engine.begin() as connection:
            connection.execute(INSERT_AUDIT, _params(entry))
    except Exception:
        logger.exception("audit row not written: %s", entry)
        return False
    return True


def write_audit_in(connection: Connection, entry: AuditEntry) -> None:
    """Insert ``entry`` in the caller's transaction: it commits with the change it records."""
    connection.execute(INSERT_AUDIT, _params(entry))


def _params(entry: AuditEntry) -> dict[str, Any]:
    return {
        "actor": entry.actor,
        "action": entry.action,
        "request_id": entry.request_id,
        "consumer_id": entry.consumer_id,
        "method": entry.method,
        "path": entry.path,
        "status_code": entry.status_code,
        "detail": json.dumps(entry.detail, default=str),
    }
