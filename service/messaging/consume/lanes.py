"""A keyed executor: one FIFO lane per key, lanes run in parallel on a bounded thread pool.

Work submitted under one key runs one item at a time, in submission order; work under
different keys runs concurrently, up to ``max_workers`` at once. After each item a busy
lane goes to the back of the pool's queue, so one hot key cannot starve the others.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)

Work = Callable[[], None]


class KeyedLanes:
    """Runs ``Work`` items in order per key and in parallel across keys."""

    def __init__(
        self,
        max_workers: int,
        on_error: Callable[[BaseException], None],
        thread_name_prefix: str = "lane",
    ):
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix=thread_name_prefix)
        self._on_error = on_error
        self._lock = threading.Lock()
        self._lanes: dict[str, deque[Work]] = {}  # key -> items waiting behind the running one

    def submit(self, key: str, work: Work) -> None:
        """Run ``work`` after every item submitted before it under ``key``."""
        with self._lock:
            waiting = self._lanes.get(key)
            if waiting is not None:
                waiting.append(work)
                return
            self._lanes[key] = deque()
        self._pool.submit(self._run, key, work)

    def drop_queued(self) -> int:
        """Forget every item not started yet; the running ones finish. Returns the count."""
        with self._lock:
            dropped = sum(len(waiting) for waiting in self._lanes.values())
            for waiting in self._lanes.values():
                waiting.clear()
        return dropped

    def shutdown(self) -> None:
        """Wait for the running items; call after ``drop_queued``."""
        self._pool.shutdown(wait=True)

    def _run(self, key: str, work: Work) -> None:
        try:
            work()
        except BaseException as exc:  # the lane must advance whatever the item did
            log.exception("lane %s: work failed", key)
            self._on_error(exc)
        finally:
            self._next(key)

    def _next(self, key: str) -> None:
        with self._lock:
            waiting = self._lanes[key]
            if not waiting:
                del self._lanes[key]
                return
            work = waiting.popleft()
        try:
            self._pool.submit(self._run, key, work)
        except RuntimeError:  # the pool is shutting down: nothing more starts
            with self._lock:
                self._lanes.pop(key, None)
