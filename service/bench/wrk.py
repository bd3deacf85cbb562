"""``wrk`` as an external load generator for ``fintegrate bench api`` and the gateway bench.

``wrk -t2 -c16 --latency`` runs ``POST /customer/data`` with a generated Lua script (method,
body, headers) against one server; its text report is parsed into req/s, p50, p99 and the
count of non-2xx answers. wrk itself comes from Debian (``apt-get install wrk``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from service.bench.loadgen import BODY

UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}
LATENCY_LINE = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", re.MULTILINE)
RATE_LINE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
NON_2XX_LINE = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
ERRORS_LINE = re.compile(r"Socket errors:.*")


@dataclass(frozen=True)
class WrkResult:
    """One wrk phase as wrk reported it."""

    name: str
    rate: float
    p50: float
    p99: float
    non_2xx: int
    socket_errors: str
    server_cpu: float = 0.0


def available() -> bool:
    return shutil.which("wrk") is not None


def lua_script(headers: dict[str, str]) -> str:
    """A wrk script that POSTs the benchmark's body with ``headers``."""
    lines = ['wrk.method = "POST"', f"wrk.body = {lua_string(BODY.decode())}"]
    lines += [f"wrk.headers[{lua_string(k)}] = {lua_string(v)}" for k, v in headers.items()]
    return "\n".join(lines) + "\n"


def lua_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def run(
    name: str,
    port: int,
    headers: dict[str, str],
    *,
    threads: int,
    connections: int,
    seconds: float,
    path: str = "/customer/data",
    post: bool = True,
) -> WrkResult:
    """One ``wrk`` run of ``seconds`` against 127.0.0.1:``port``; its parsed report.

    ``POST``s the benchmark's body to ``path``, or ``GET``s it when ``post`` is false.
    """
    if post:
        text = lua_script({"Content-Type": "application/json", **headers})
    else:
        text = "".join(
            f"wrk.headers[{lua_string(k)}] = {lua_string(v)}\n" for k, v in headers.items()
        )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(text)
    try:
        command = [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-s",
            script.name,
            f"http://127.0.0.1:{port}{path}",
        ]
        output = subprocess.run(
            command, capture_output=True, text=True, check=True, timeout=seconds + 30
        ).stdout
    finally:
        Path(script.name).unlink(missing_ok=True)
    return parse(name, output)


def parse(name: str, output: str) -> WrkResult:
    """req/s, p50, p99 (seconds) and non-2xx count from wrk's ``--latency`` report."""
    latencies = {int(q): float(v) * UNITS[unit] for q, v, unit in LATENCY_LINE.findall(output)}
    rate = RATE_LINE.search(output)
    if rate is None or set(latencies) != {50, 99}:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    non_2xx = NON_2XX_LINE.search(output)
    errors = ERRORS_LINE.search(output)
    return WrkResult(
        name=name,
        rate=float(rate.group(1)),
        p50=latencies[50],
        p99=latencies[99],
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=errors.group(0) if errors else "",
    )
