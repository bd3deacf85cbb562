"""Steady, bounded API load in a background thread: customers created, statuses recorded."""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from types import TracebackType

import httpx

REQUEST_TIMEOUT_SECONDS = 20.0


class CustomerLoad:
    """POST /customer/data round-robin over ``urls`` until stopped or ``limit`` requests.

    Each answer's status is recorded (``"timeout"``/``"error"`` for transport failures),
    with its latency, so a test can say what every request got and how long it took.
    """

    def __init__(
        self, urls: list[str], api_key: str, limit: int, pause_seconds: float = 0.0
    ) -> None:
        self.urls = urls
        self.headers = {"X-API-Key": api_key}
        self.limit = limit
        self.pause_seconds = pause_seconds
        self.statuses: list[int | str] = []
        self.latencies: list[float] = []
        self.stop_event = threading.Event()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="customer-load", daemon=True)

    def __enter__(self) -> CustomerLoad:
        self.thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(REQUEST_TIMEOUT_SECONDS + 5)

    def wait(self, timeout: float) -> bool:
        """Wait until every request was sent; True when the load finished."""
        return self.done.wait(timeout)

    @property
    def created(self) -> int:
        return self.statuses.count(201)

    def summary(self) -> dict[str, int]:
        return {str(status): count for status, count in Counter(self.statuses).items()}

    def _run(self) -> None:
        clients = [httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_SECONDS) for url in self.urls]
        try:
            for index, client in zip(range(self.limit), itertools.cycle(clients), strict=False):
                if self.stop_event.is_set():
                    break
                self._create(client, index)
                if self.pause_seconds:
                    self.stop_event.wait(self.pause_seconds)
        finally:
            for client in clients:
                client.close()
            self.done.set()

    def _create(self, client: httpx.Client, index: int) -> None:
        started = time.monotonic()
        try:
            status: int | str = client.post(
                "/customer/data", json={"name": f"load {index}"}, headers=self.headers
            ).status_code
        except httpx.TimeoutException:
            status = "timeout"
        except httpx.TransportError:
            status = "error"
        self.latencies.append(time.monotonic() - started)
        self.statuses.append(status)
