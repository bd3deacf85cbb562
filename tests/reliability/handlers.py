"""Handlers for ``fintegrate consume --handler tests.reliability.handlers:<name>``.

Each appends one line per call to the file named by ``FT_HANDLER_LOG`` (O_APPEND writes of
a short line are atomic, so several workers may share one file).
"""

from __future__ import annotations

import os
import time

from service.messaging.messages import EventMessage

LOG_ENV = "FT_HANDLER_LOG"
SLOW_ENV = "FT_HANDLER_SECONDS"


def _append(line: str) -> None:
    descriptor = os.open(os.environ[LOG_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, f"{line}\n".encode())
    finally:
        os.close(descriptor)


def record(message: EventMessage) -> None:
    """Write the event id: one line per delivery the handler saw."""
    _append(message.event_id)


def slow_record(message: EventMessage) -> None:
    """``start <id>``, a pause of ``FT_HANDLER_SECONDS`` (default 5), ``done <id>``."""
    _append(f"start {message.event_id}")
    time.sleep(float(os.environ.get(SLOW_ENV, "5")))
    _append(f"done {message.event_id}")


def handler_lines(path: os.PathLike[str] | str) -> list[str]:
    """The lines the handlers wrote (none when the file does not exist yet)."""
    try:
        with open(path, encoding="utf-8") as log:
            return log.read().splitlines()
    except FileNotFoundError:
        return []


def record_sequence(message: EventMessage) -> None:
    """Write ``<event_id> <customer_id or -> <sequence>``: which event, of whom, in what order."""
    _append(f"{message.event_id} {message.customer_id or '-'} {message.sequence}")
