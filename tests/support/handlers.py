"""Event handlers loaded by ``fintegrate consume --handler`` in subprocess tests."""

from __future__ import annotations

import os
import time

from service.messaging.messages import EventMessage

LOG_ENV = "FINTEGRATE_TEST_HANDLER_LOG"
SLOW_SECONDS = 1.5


def slow_handler(message: EventMessage) -> None:
    """Write ``start <id>``, take a while, write ``done <id>`` to the file named by the env."""
    path = os.environ[LOG_ENV]
    with open(path, "a", encoding="utf-8") as log:
        log.write(f"start {message.event_id}\n")
    time.sleep(SLOW_SECONDS)
    with open(path, "a", encoding="utf-8") as log:
        log.write(f"done {message.event_id}\n")
