"""The delivery process's Prometheus metrics (SPEC 9).

``fintegrate_webhook_attempts_total{result}`` is one of the platform's families
(``service.ops.platform_metrics``, served once ``register_event_metrics`` added it); the
attempt durations are this process's own, in the process-wide registry.
"""

from __future__ import annotations

from prometheus_client import Histogram

from service.ops.platform_metrics import WEBHOOK_ATTEMPTS

ATTEMPT_SECONDS = Histogram(
    "fintegrate_webhook_attempt_seconds",
    "Duration of one webhook POST, connect to the first 4 KiB of the answer",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0),
)


def count_attempt(result: str, duration_ms: int) -> None:
    """One attempt: its result (succeeded | retrying | failed) and how long it took."""
    WEBHOOK_ATTEMPTS.labels(result=result).inc()
    ATTEMPT_SECONDS.observe(duration_ms / 1000)
