"""Loopback webhook receivers in a process of their own, so that neither side of a
benchmark shares its interpreter (and GIL) with the servers it sends to.

``ReceiverProcess(n)`` starts ``python -m service.bench.receivers n`` with ``n``
``Receiver``s and talks to it over its stdin and stdout, one JSON line each way:
``count`` (deliveries per receiver), ``arrivals`` (first arrival per customer, wall clock)
and ``stop``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from typing import Any

from service.bench.receiver import Receiver, no_key


def customer_of(body: bytes) -> str:
    return str(json.loads(body).get("customer_id"))


class ReceiverProcess:
    """``count`` receivers in a child process; their URLs, counts and arrivals."""

    def __init__(self, count: int, by_customer: bool = False) -> None:
        command = [sys.executable, "-m", "service.bench.receivers", str(count)]
        if by_customer:
            command.append("--by-customer")
        self._child = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self._lock = threading.Lock()
        self.urls: list[str] = self._read()

    def total(self) -> int:
        """Deliveries received so far, all receivers together."""
        return sum(self._ask("count"))

    def arrivals(self) -> dict[str, float]:
        """The first arrival per customer (``by_customer``), wall-clock seconds."""
        found: dict[str, float] = self._ask("arrivals")
        return found

    def stop(self) -> None:
        if self._child.poll() is None:
            assert self._child.stdin is not None
            self._child.stdin.write("stop\n")
            self._child.stdin.close()
            self._child.wait(10)

    def _ask(self, command: str) -> Any:
        with self._lock:
            assert self._child.stdin is not None
            self._child.stdin.write(command + "\n")
            return self._read()

    def _read(self) -> Any:
        assert self._child.stdout is not None
        line = self._child.stdout.readline()
        if not line:
            raise RuntimeError("the receiver process ended")
        return json.loads(line)


def serve(count: int, by_customer: bool) -> None:
    """The child: start the receivers, print their URLs, answer commands until ``stop``."""
    receivers = [Receiver(customer_of if by_customer else no_key) for _ in range(count)]
    print(json.dumps([receiver.url for receiver in receivers]), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "count":
            print(json.dumps([receiver.count for receiver in receivers]), flush=True)
        elif command == "arrivals":
            merged: dict[str, float] = {}
            for receiver in receivers:
                merged.update(receiver.arrivals_now())
            print(json.dumps(merged), flush=True)
        else:
            break
    for receiver in receivers:
        receiver.stop()


if __name__ == "__main__":
    serve(int(sys.argv[1]), "--by-customer" in sys.argv[2:])
