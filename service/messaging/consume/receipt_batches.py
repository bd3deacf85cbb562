"""Receipts of many lanes sent together: a few sender threads, one API call per batch.

A lane hands its receipt to ``ReceiptBatches.put`` and blocks until that receipt's
outcome is known, so its ack still follows the recorded receipt. A few sender threads
each take every receipt waiting when their previous call returned (up to ``batch_size``)
into their next call: while the API is quick a batch is one or two receipts, and while it
is slow the receipts of all lanes that piled up behind it go in a few calls instead of one
call each — the API does less work exactly when it has the least to spare. More than one
sender, because a call's receipts are each committed on their own: one sender put every
commit of the worker behind one call (measured: the worker fell seconds behind at 200
events/s).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

JOIN_SECONDS = 30.0
SENDERS = 4


@dataclass(eq=False)
class PendingReceipt:
    """One lane's receipt and, once ``done`` is set, what became of it."""

    body: dict[str, Any]
    done: threading.Event = field(default_factory=threading.Event)
    outcome: Any = None  # the sender's answer for this receipt
    error: BaseException | None = None  # raised in the lane instead of an outcome


class ReceiptBatches:
    """Collects receipts from many threads and hands them to ``send`` in batches.

    ``send(batch)`` runs on a sender thread (up to ``senders`` at once) and sets ``outcome``
    (or ``error``) on each receipt of the batch; whatever it raises becomes every unanswered
    receipt's error. A sender starts when a receipt finds none idle.
    """

    def __init__(
        self,
        send: Callable[[list[PendingReceipt]], None],
        batch_size: int,
        closed_outcome: Any,
        senders: int = SENDERS,
    ) -> None:
        self._send = send
        self._batch_size = batch_size
        self._senders_wanted = senders
        self._closed_outcome = closed_outcome
        self._changed = threading.Condition()
        self._waiting: deque[PendingReceipt] = deque()
        self._closed = False
        self._senders: list[threading.Thread] = []
        self._idle = 0  # senders waiting for receipts
        self.batches = 0  # calls handed to ``send``

    def put(self, body: dict[str, Any]) -> Any:
        """Send ``body`` with the next batch; its outcome (raises the sender's error)."""
        pending = PendingReceipt(body)
        with self._changed:
            if self._closed:
                return self._closed_outcome
            self._waiting.append(pending)
            if not self._idle:
                self._start_sender()
            self._changed.notify()
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.outcome

    def close(self) -> None:
        """Send what is waiting, then stop the senders; later receipts get ``closed_outcome``."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
            senders = list(self._senders)
        for sender in senders:
            sender.join(JOIN_SECONDS)

    def _start_sender(self) -> None:
        """Under the lock: one more sender, while fewer than wanted run (all of them busy)."""
        if len(self._senders) < self._senders_wanted:
            name = f"receipts-{len(self._senders) + 1}"
            sender = threading.Thread(target=self._run, name=name, daemon=True)
            self._senders.append(sender)
            sender.start()

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if not batch:
                return
            try:
                self._send(batch)
            except BaseException as exc:  # every lane of the batch must learn of it
                log.debug("a receipt batch failed: %r", exc)
                for pending in batch:
                    if pending.outcome is None and pending.error is None:
                        pending.error = exc
            finally:
                for pending in batch:
                    pending.done.set()

    def _next_batch(self) -> list[PendingReceipt]:
        """Up to ``batch_size`` waiting receipts; empty once closed with none left."""
        with self._changed:
            self._idle += 1
            while not self._waiting and not self._closed:
                self._changed.wait()
            self._idle -= 1
            count = min(len(self._waiting), self._batch_size)
            self.batches += 1 if count else 0
            return [self._waiting.popleft() for _ in range(count)]
