"""What an answer means (SPEC 8): delivered, retry when, give up, disable; Retry-After."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from service.webhooks.delivery.outcomes import AttemptResult, decide, retry_after_seconds

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
SCHEDULE = (5.0, 30.0, 120.0)


def answered(status: int | None, retry_after: str | None = None) -> AttemptResult:
    error = None if status is not None else "ConnectError: refused"
    return AttemptResult(NOW, 3, status, "", error, retry_after)


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_any_2xx_is_delivered(status: int) -> None:
    decision = decide(answered(status), 1, SCHEDULE, NOW)
    assert (decision.attempt_status, decision.delivery_status) == ("succeeded", "delivered")
    assert decision.next_attempt_at is None and not decision.disable_endpoint


def test_410_disables_and_keeps_the_delivery_pending() -> None:
    decision = decide(answered(410), 1, SCHEDULE, NOW)
    assert decision.disable_endpoint and decision.delivery_status == "pending"


@pytest.mark.parametrize("status", [None, 301, 400, 404, 429, 500, 502, 503])
def test_failures_follow_the_schedule_with_jitter(status: int | None) -> None:
    for attempt, delay in enumerate(SCHEDULE, start=1):
        decision = decide(answered(status), attempt, SCHEDULE, NOW)
        assert decision.attempt_status == "retrying"
        assert decision.next_attempt_at is not None
        waited = (decision.next_attempt_at - NOW).total_seconds()
        assert delay * 0.9 <= waited <= delay * 1.1
    given_up = decide(answered(status), len(SCHEDULE) + 1, SCHEDULE, NOW)
    assert (given_up.attempt_status, given_up.delivery_status) == ("failed", "failed")


@pytest.mark.parametrize("status", [429, 503])
def test_429_and_503_honour_retry_after(status: int) -> None:
    decision = decide(answered(status, "90"), 1, SCHEDULE, NOW)
    assert decision.next_attempt_at == NOW + timedelta(seconds=90)


def test_retry_after_from_other_statuses_is_ignored() -> None:
    decision = decide(answered(500, "90"), 1, SCHEDULE, NOW)
    assert decision.next_attempt_at is not None
    assert (decision.next_attempt_at - NOW).total_seconds() < 10


def test_retry_after_forms() -> None:
    assert retry_after_seconds("120", NOW) == 120
    assert retry_after_seconds("Mon, 07 Dec 2026 12:01:00 GMT", NOW) == 60
    assert retry_after_seconds("Mon, 07 Dec 2026 11:00:00 GMT", NOW) == 0
    assert retry_after_seconds("9999999", NOW) == 86400
    assert retry_after_seconds("soon", NOW) is None
    assert retry_after_seconds(None, NOW) is None
