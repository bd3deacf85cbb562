"""Which claimed deliveries may be POSTed now: per endpoint, at most the in-flight cap, and
per customer one at a time, in sequence order.

A claim may hand this process a customer's next events while an earlier one is still
claimed here (repository.claim_due): each claimed row names the pending delivery before it
(``after_delivery_id``). A row goes once that one's 2xx is in; the endpoint's slot is free
as soon as an answer is in, not when the loop has recorded it. Any other answer returns the
endpoint's rows not yet sent to the database (``released``): the claim decides again, with
the retry's ``next_attempt_at``, the breaker and a 410 recorded, and the retry holds back
only its own customer. A row held longer than ``hold_seconds`` is returned too, so a POST
never starts so late that its claim could lapse under it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID


@dataclass
class Lane:
    """One endpoint's rows: ready to go, waiting for their predecessor's 2xx, being sent."""

    ready: deque[tuple[float, Any]] = field(default_factory=deque)
    waiting: dict[UUID, tuple[float, Any]] = field(default_factory=dict)
    sending: int = 0


class EndpointLanes:
    """Thread-safe scheduling of claimed rows (``delivery_id``, ``endpoint_id``,
    ``after_delivery_id``, ``sequence``) under a per-endpoint in-flight cap."""

    def __init__(self, cap: int, hold_seconds: float):
        self.cap = cap
        self.hold_seconds = hold_seconds
        self._lanes: dict[UUID, Lane] = {}
        self._held: set[UUID] = set()  # ready, waiting or being sent
        self._answered_ok: set[UUID] = set()  # 2xx in, outcome not yet committed
        self._released: list[Any] = []
        self._lock = threading.Lock()

    def add(self, rows: list[Any]) -> None:
        """Take newly claimed rows; one whose predecessor is not here is released."""
        now = time.monotonic()
        with self._lock:
            for row in sorted(rows, key=lambda r: r.sequence):
                lane = self._lanes.setdefault(row.endpoint_id, Lane())
                after = row.after_delivery_id
                if after is None or after in self._answered_ok:
                    lane.ready.append((now, row))
                elif after in self._held:
                    lane.waiting[after] = (now, row)
                else:
                    self._released.append(row)
                    continue
                self._held.add(row.delivery_id)

    def take(self) -> list[Any]:
        """Rows to POST now (each counted in flight on its endpoint until ``answered``)."""
        now = time.monotonic()
        taken = []
        with self._lock:
            for lane in self._lanes.values():
                while lane.ready and lane.sending < self.cap:
                    since, row = lane.ready.popleft()
                    if now - since > self.hold_seconds:
                        self._release(lane, row)
                        continue
                    lane.sending += 1
                    taken.append(row)
        return taken

    def answered(self, row: Any, succeeded: bool) -> None:
        """A POST is over: free its slot; on 2xx its customer's next row may go, otherwise
        the endpoint's unsent rows go back to the database."""
        with self._lock:
            lane = self._lanes[row.endpoint_id]
            lane.sending -= 1
            self._held.discard(row.delivery_id)
            if succeeded:
                self._answered_ok.add(row.delivery_id)
                follower = lane.waiting.pop(row.delivery_id, None)
                if follower is not None:
                    lane.ready.append(follower)
                return
            self._release_unsent(lane)

    def committed(self, delivery_ids: set[UUID]) -> None:
        """These outcomes are recorded: no claimed row can name them any more."""
        with self._lock:
            self._answered_ok -= delivery_ids

    def released(self) -> list[Any]:
        """The rows given back since the last call (their claims to clear)."""
        with self._lock:
            rows, self._released = self._released, []
        return rows

    def give_back(self, rows: list[Any]) -> None:
        """Rows whose release could not be written: try again next turn."""
        with self._lock:
            self._released[:0] = rows

    def release_all(self) -> None:
        """Give back every row not being sent (the process is stopping)."""
        with self._lock:
            for lane in self._lanes.values():
                self._release_unsent(lane)

    def held(self) -> int:
        with self._lock:
            return len(self._held)

    def _release_unsent(self, lane: Lane) -> None:
        while lane.ready:
            self._release(lane, lane.ready.popleft()[1])
        for _, row in list(lane.waiting.values()):
            self._release(lane, row)

    def _release(self, lane: Lane, row: Any) -> None:
        if row.delivery_id not in self._held:
            return  # released already, with its predecessor
        self._held.discard(row.delivery_id)
        waiting = lane.waiting.get(row.after_delivery_id)
        if waiting is not None and waiting[1] is row:
            del lane.waiting[row.after_delivery_id]
        self._released.append(row)
        follower = lane.waiting.pop(row.delivery_id, None)
        if follower is not None:
            self._release(lane, follower[1])
