"""The relay's per-tenant state: queue-full holds with back-off, and the small tenants' demand."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from service.messaging.publish.tenants import (
    MAX_DELAY_SECONDS,
    QueueFullHolds,
    TenantTurns,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_refused_tenant_is_held_with_growing_delays_until_a_publish_is_confirmed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="service.messaging.publish.tenants")
    clock = Clock()
    holds = QueueFullHolds(clock)
    holds.update(accepted=["b"], refused=["a"])
    assert holds.held() == ["a"]  # b is never held
    waits = []
    for _ in range(8):
        wait = holds.next_release_in()
        assert wait is not None
        waits.append(wait)
        clock.now += wait + 0.001
        assert holds.held() == []  # its back-off passed: tried again
        holds.update(accepted=[], refused=["a"])
    assert max(waits) <= MAX_DELAY_SECONDS
    assert waits[-1] > waits[0]  # the delay grew
    holds.update(accepted=["a"], refused=[])
    assert holds.held() == [] and holds.next_release_in() is None
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2, messages  # one line when the hold starts, one when it ends
    assert "is full" in messages[0] and "accepts again" in messages[1]


def test_a_tenant_both_accepted_and_refused_in_a_round_stays_held() -> None:
    holds = QueueFullHolds(Clock())
    holds.update(accepted=["a"], refused=["a"])
    assert holds.held() == ["a"]


def test_turns_remember_small_demands_and_the_last_tenant_served() -> None:
    turns = TenantTurns()
    heads = [SimpleNamespace(consumer_id="loud", tenant_share=100)] * 100 + [
        SimpleNamespace(consumer_id="quiet", tenant_share=100)
    ] * 3
    turns.served(heads)  # type: ignore[arg-type]
    assert turns.known == {"quiet": 6}  # the loud one filled its share: no quota remembered
    assert turns.after == "quiet"
    turns.served([])
    assert turns.after is None and turns.known == {}
