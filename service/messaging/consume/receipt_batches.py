"""Receipts of many lanes sent together: one sender thread, one API call per batch.

A lane hands its receipt to ``ReceiptBatches.put`` and blocks until that receipt's
outcome is known, so its ack still follows the recorded receipt. The sender takes every
receipt waiting when its previous call returned (up to ``batch_size``) into the next
call: while the API is quick a batch is one or two receipts, and while it is slow the
receipts of all lanes that piled up behind it go in one call instead of one call each —
the API does less work exactly when it has the least to spare.
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


@dataclass(eq=False)
class PendingReceipt:
    """One lane's receipt and, once ``done`` is set, what became of it."""

    body: dict[str, Any]
    done: threading.Event = field(default_factory=threading.Event)
    outcome: Any = None  # the sender's answer for this receipt
    error: BaseException | None = None  # raised in the lane instead of an outcome


class ReceiptBatches:
    """Collects receipts from many threads and hands them to ``send`` in batches.

    ``send(batch)`` runs on the sender thread and sets ``outcome`` (or ``error``) on each
    receipt of the batch; whatever it raises becomes every unanswered receipt's error.
    """

    def __init__(
        self,
        send: Callable[[list[PendingReceipt]], None],
        batch_size: int,
        closed_outcome: Any,
    ) -> None:
        self._send = send
        self._batch_size = batch_size
        self._closed_outcome = closed_outcome
        self._changed = threading.Condition()
        self._waiting: deque[PendingReceipt] = deque()
        self._closed = False
        self._sender: threading.Thread | None = None
        self.batches = 0  # calls handed to ``send``

    def put(self, body: dict[str, Any]) -> Any:
        """Send ``body`` with the next batch; its outcome (raises the sender's error)."""
        pending = PendingReceipt(body)
        with self._changed:
            if self._closed:
                return self._closed_outcome
            self._waiting.append(pending)
            self._start_sender()
            self._changed.notify()
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.outcome

    def close(self) -> None:
        """Send what is waiting, then stop the sender; later receipts get ``closed_outcome``."""
        with self._changed:
            self._closed = True
            self._changed.notify()
            sender = self._sender
        if sender is not None:
            sender.join(JOIN_SECONDS)

    def _start_sender(self) -> None:
        """Under the lock: the sender thread, started with the first receipt."""
        if self._sender is None:
            self._sender = threading.Thread(target=self._run, name="receipts", daemon=True)
            self._sender.start()

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if not batch:
                return
            self.batches += 1
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
            while not self._waiting and not self._closed:
                self._changed.wait()
            count = min(len(self._waiting), self._batch_size)
            return [self._waiting.popleft() for _ in range(count)]
