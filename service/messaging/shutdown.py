"""Graceful stop on SIGTERM/SIGINT for long-running workers (relay, consumer)."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def install_stop_handlers(stop: threading.Event) -> Callable[[], None]:
    """First SIGTERM/SIGINT sets ``stop``; a second one exits at once. Returns a restorer.

    Only the main thread may install signal handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

    def handle(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            raise SystemExit(128 + signum)
        log.warning(
            "%s received: finishing the work in hand, then stopping", signal.Signals(signum).name
        )
        stop.set()

    for sig in STOP_SIGNALS:
        signal.signal(sig, handle)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
