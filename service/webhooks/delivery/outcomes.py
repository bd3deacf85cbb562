"""What one attempt's answer means (SPEC 8): delivered, retry when, failed, or disable.

- any 2xx: delivered (a ``processed`` receipt);
- 410: the endpoint is disabled; the delivery stays pending, so re-enabling resumes it;
- 429 / 503: retry after ``Retry-After`` (seconds or an HTTP date) when given;
- anything else, a timeout or a refused connection: the next delay of
  ``FINTEGRATE_WEBHOOK_RETRY_SCHEDULE`` (jittered), then ``failed``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Literal

JITTER = 0.1
MAX_RETRY_AFTER_SECONDS = 86400.0
HONOURS_RETRY_AFTER = frozenset({429, 503})
GONE = 410

AttemptStatus = Literal["succeeded", "retrying", "failed"]
DeliveryStatus = Literal["delivered", "pending", "failed"]


@dataclass(frozen=True)
class AttemptResult:
    """What happened on the wire."""

    started_at: datetime
    duration_ms: int
    status_code: int | None = None
    body: str | None = None
    error: str | None = None
    retry_after: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass(frozen=True)
class Decision:
    """The attempt's status, the delivery's next state and whether to disable the endpoint."""

    attempt_status: AttemptStatus
    delivery_status: DeliveryStatus
    next_attempt_at: datetime | None = None
    disable_endpoint: bool = False


def decide(
    result: AttemptResult,
    attempt_number: int,
    schedule: Sequence[float],
    now: datetime | None = None,
    jitter: float = JITTER,
) -> Decision:
    """The outcome of attempt ``attempt_number`` (1-based) given the retry ``schedule``."""
    now = now or datetime.now(UTC)
    if result.succeeded:
        return Decision("succeeded", "delivered")
    if result.status_code == GONE:
        return Decision("retrying", "pending", disable_endpoint=True)
    if attempt_number > len(schedule):
        return Decision("failed", "failed")
    delay = schedule[attempt_number - 1] * random.uniform(1 - jitter, 1 + jitter)
    if result.status_code in HONOURS_RETRY_AFTER:
        asked = retry_after_seconds(result.retry_after, now)
        if asked is not None:
            delay = asked
    return Decision("retrying", "pending", now + timedelta(seconds=delay))


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """``Retry-After`` as seconds from ``now`` (capped at a day); None when absent or invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_SECONDS)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max((when - now).total_seconds(), 0.0), MAX_RETRY_AFTER_SECONDS)
