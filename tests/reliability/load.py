"""API load in background threads: customers created (and changed), statuses recorded."""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable
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


class CustomerLives:
    """Threads that each run customer lives until stopped: create a customer, then set each
    of ``statuses`` in turn. Every call follows the previous answer, so one customer's events
    commit in a known order.

    Every answer's status is counted (a transport failure by its exception's name), bodies
    that are not an envelope are kept, and so are the writes acknowledged per customer. A
    customer whose call failed is left there (its write may or may not have committed), and
    a new one begins.
    """

    def __init__(
        self, api_url: str, api_key: str, statuses: tuple[str, ...], threads: int = 3
    ) -> None:
        self.api_url, self.api_key, self.life_statuses = api_url, api_key, statuses
        self.stop = threading.Event()
        self.statuses: Counter[int | str] = Counter()
        self.bad_bodies: list[str] = []
        self.acknowledged: dict[str, int] = {}  # customer -> events acknowledged
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> CustomerLives:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def failures(self) -> dict[int | str, int]:
        """How many answers were anything but a 200 or 201, by status."""
        return {status: n for status, n in self.statuses.items() if status not in (200, 201)}

    def _run(self) -> None:
        headers = {"X-API-Key": self.api_key}
        with httpx.Client(base_url=self.api_url, headers=headers, timeout=30) as client:
            while not self.stop.is_set():
                self._life(client)
                self.stop.wait(0.05)

    def _call(self, send: Callable[[], httpx.Response]) -> httpx.Response | None:
        try:
            response = send()
        except httpx.TransportError as exc:
            self.statuses[type(exc).__name__] += 1
            return None
        self.statuses[response.status_code] += 1
        body = response.json()
        if set(body) != {"data", "detail"}:
            self.bad_bodies.append(response.text)
        return response

    def _life(self, client: httpx.Client) -> None:
        created = self._call(lambda: client.post("/customer/data", json={"name": "Lively"}))
        if created is None or created.status_code != 201:
            self.stop.wait(0.2)
            return
        customer_id = created.json()["data"]["customer_id"]
        self.acknowledged[customer_id] = 1
        for status in self.life_statuses:
            changed = self._call(
                lambda s=status: client.patch(
                    f"/customer/data/{customer_id}/status", json={"status": s}
                )
            )
            if changed is None or changed.status_code != 200:
                return
            self.acknowledged[customer_id] += 1
