"""The worker's bookkeeping of deliveries between the broker and their ack.

A ``Delivery`` is a parsed message with the channel it came on; its ``Outcome`` is the
receipt sent for it. ``Unsettled`` counts the deliveries of the current channel whose ack
or reject is not decided yet, so a stopping worker knows what it still waits for.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from service.messaging.consume.receipts import Receipt
from service.messaging.messages import EventMessage


@dataclass(frozen=True)
class Delivery:
    """One parsed message and the channel (``epoch``) it arrived on.

    ``may_be_duplicate``: redelivered or marked as a possible copy (see ``messages``);
    ``in_hand``: counted against its customer's in-hand cap until processed;
    ``opens_aggregate``: its aggregate's sequence 1, judged by the cache alone
    (``consumer.FirstCopies``).
    """

    message: EventMessage
    tag: int
    connection: Any
    channel: Any
    epoch: int
    may_be_duplicate: bool = True
    in_hand: bool = False
    opens_aggregate: bool = False


@dataclass(frozen=True)
class Outcome:
    """What became of a delivery before its ack: the receipt sent and the API's answer."""

    status: str
    receipt: Receipt
    stale: bool = False


class Unsettled:
    """Deliveries of the current channel whose ack or reject is not decided (thread-safe).

    Each new channel starts a new epoch; work of an older epoch no longer counts.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.epoch = 0
        self.count = 0

    def new_channel(self) -> int:
        with self._lock:
            self.epoch += 1
            self.count = 0
            return self.epoch

    def add(self, epoch: int) -> None:
        with self._lock:
            if epoch == self.epoch:
                self.count += 1

    def done(self, epoch: int, count: int = 1) -> None:
        with self._lock:
            if epoch == self.epoch:
                self.count = max(0, self.count - count)
