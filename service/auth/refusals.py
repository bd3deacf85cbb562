"""Refused authentications: counted in Prometheus and logged as a sample, never audited.

A stranger's request writes nothing: no audit row, no key row. What is left of it is one
counter per reason (``fintegrate_auth_refusals_total``) and at most one log line per
``interval`` seconds, which says how many refusals it stands for.
"""

from __future__ import annotations

import logging
import threading
import time

from prometheus_client import CollectorRegistry, Counter

logger = logging.getLogger(__name__)

REFUSALS_METRIC = "fintegrate_auth_refusals_total"
LOG_INTERVAL_SECONDS = 10.0


class RefusalRecorder:
    """The refusal counter of one app and its sampled log line."""

    def __init__(self, registry: CollectorRegistry, interval: float = LOG_INTERVAL_SECONDS):
        self.counter = Counter(
            REFUSALS_METRIC,
            "Requests refused by authentication (none of them is audited), by reason",
            ["reason"],
            registry=registry,
        )
        self.interval = interval
        self._lock = threading.Lock()
        self._next_log = 0.0
        self._unlogged = 0

    def record(self, reason: str, what: str, client_address: str) -> None:
        """Count one refusal; log it when the sampling interval has passed."""
        self.counter.labels(reason).inc()
        now = time.monotonic()
        with self._lock:
            self._unlogged += 1
            if now < self._next_log:
                return
            self._next_log = now + self.interval
            standing_for, self._unlogged = self._unlogged, 0
        logger.warning(
            "authentication refused (%s) on %s from %s; %d refusal(s) since the last line",
            reason,
            what,
            client_address,
            standing_for,
        )
