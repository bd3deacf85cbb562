"""The recovery's bookkeeping on its own: what is owed, what is in hand, why a letter died."""

from __future__ import annotations

from service.messaging.consume.recovery import InHand, Owed, death_reason


def test_owed_schedules_once_and_settles_only_when_nothing_more_was_owed() -> None:
    owed = Owed()
    assert owed.owe("a", "cust-a", 5) is True  # the first: schedule its recovery
    assert owed.owe("a", "cust-a", 3) is False  # already scheduled; never lowered
    assert owed.owe("a", "cust-a", 8) is False
    target = owed.target("a")
    assert target is not None and (target.customer_id, target.through) == ("cust-a", 8)
    assert owed.settle("a", 5) is False and owed.owes("a")  # 8 was owed meanwhile
    assert owed.settle("a", 8) is True and not owed.owes("a")
    assert owed.target("a") is None
    assert owed.owe("a", "cust-a", 9) is True  # owed again: scheduled again


def test_in_hand_caps_each_key_and_forgets_an_old_channel() -> None:
    hand = InHand(cap=2)
    hand.reset(1)
    assert hand.take("a", 1) and hand.take("a", 1)
    assert not hand.take("a", 1)  # at the cap
    assert hand.take("b", 1)  # another key is not held back
    hand.release("a", 1)
    assert hand.take("a", 1)
    hand.reset(2)  # a new channel: the old one's messages are redelivered
    hand.release("a", 1)  # a late release of the old channel changes nothing
    assert hand.take("a", 2) and hand.take("a", 2) and not hand.take("a", 2)


def test_death_reason_is_the_latest_x_death_entry() -> None:
    assert death_reason(None) is None
    assert death_reason({"x-death": []}) is None
    assert death_reason({"x-death": [{"reason": b"expired"}]}) == "expired"
    latest_first = {"x-death": [{"reason": "rejected"}, {"reason": "maxlen"}]}
    assert death_reason(latest_first) == "rejected"  # replayed, then failed: a failure
