"""The built-in load generator: keep-alive HTTP/1.1 on asyncio, and CPU meters.

Each connection sends ``POST /customer/data`` back to back and reads the answer by its
Content-Length; latencies of requests sent and answered inside the measured window count.
It runs on uvloop and uses a few percent of one core at the rates this machine reaches
(``fintegrate bench api`` prints its share). ``steady_load`` is the open-loop variant the
latency benchmarks use: requests at a fixed rate over a pool of connections.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.bench.figures import percentile

BODY = b'{"name": "Bench Customer", "email": "bench@example.com"}'
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
STEADY_CONNECTIONS = 32  # the open-loop pool: enough that a due request rarely waits


@dataclass(frozen=True)
class Target:
    """One server under test: its name, port and the headers each request carries."""

    name: str
    port: int
    headers: bytes
    body: bytes = BODY


@dataclass(frozen=True)
class Result:
    """One measured phase."""

    name: str
    seconds: float
    latencies: list[float]
    statuses: Counter[int]
    generator_cpu: float = 0.0
    server_cpu: float = 0.0
    machine_busy: float = 0.0
    fail_open: int | None = None

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, fraction: float) -> float:
        return percentile(self.latencies, fraction)


def process_tree_cpu(root_pid: int) -> float:
    """CPU seconds (user + system) used so far by ``root_pid`` and its descendants."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    tree, frontier = {root_pid}, [root_pid]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        tree.update(children)
        frontier.extend(children)
    return sum(times.get(pid, 0.0) for pid in tree)


def machine_cpu() -> tuple[float, float]:
    """``(busy, total)`` jiffies of all CPUs since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


async def connection_loop(target: Target, window: tuple[float, float], result: Result) -> None:
    """One keep-alive connection sending requests back to back until the window closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
    request = target.headers + target.body
    start, end = window
    try:
        while (sent := time.perf_counter()) < end:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = content_length(head)
            await reader.readexactly(length)
            done = time.perf_counter()
            if sent >= start and done <= end:
                result.latencies.append(done - sent)
                result.statuses[int(head[9:12])] += 1
    finally:
        writer.close()


def content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise RuntimeError(f"response without Content-Length: {head!r}")


async def drive(target: Target, connections: int, warmup: float, duration: float) -> Result:
    """Load ``target`` and measure the window after the warm-up."""
    start = time.perf_counter() + warmup
    result = Result(target.name, duration, [], Counter())
    loops = [connection_loop(target, (start, start + duration), result) for _ in range(connections)]
    await asyncio.gather(*loops)
    return result


def run_loop(coroutine: Coroutine[Any, Any, Result]) -> Result:
    """Runs the load on uvloop when it is installed (it is, with uvicorn[standard])."""
    factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coroutine)


def request_head(port: int, extra: str = "") -> bytes:
    return (
        f"POST /customer/data HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}"
        f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
    ).encode()


def steady_load(
    url: str, api_key: str, rate: float, seconds: float
) -> dict[str, tuple[float, float]]:
    """Open-loop POST /customer/data at ``rate``/s; customer_id -> wall times (due, 201).

    A request is due at its scheduled moment whether or not the one before was answered,
    so a slow answer delays no later request (only a full pool of connections would).
    """
    return asyncio.run(_steady_load(url, api_key, rate, seconds))


async def _steady_load(
    url: str, api_key: str, rate: float, seconds: float
) -> dict[str, tuple[float, float]]:
    """Raw HTTP/1.1 over keep-alive connections: cheap enough not to steal the servers' CPU."""
    port = int(url.rsplit(":", 1)[1])
    request = request_head(port, f"X-API-Key: {api_key}\r\n") + BODY
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(STEADY_CONNECTIONS):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    answered: dict[str, tuple[float, float]] = {}

    async def create() -> None:
        due = time.time()
        reader, writer = await pool.get()
        writer.write(request)
        status, payload = await read_response(reader)
        if status == 201:
            answered[json.loads(payload)["data"]["customer_id"]] = (due, time.time())
        pool.put_nowait((reader, writer))

    started = time.monotonic()
    tasks = []
    for index in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, started + index / rate - time.monotonic()))
        tasks.append(asyncio.create_task(create()))
    await asyncio.gather(*tasks)
    while not pool.empty():
        pool.get_nowait()[1].close()
    return answered


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), await reader.readexactly(content_length(head))
