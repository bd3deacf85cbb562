"""Where the API's time goes under load: py-spy samples of the server, summed by layer.

``fintegrate bench api --profile FILE`` records the API server with ``py-spy record``
(collapsed stacks, non-blocking, active samples only) during one extra built-in-generator
phase and prints, per layer of the request path, the share of samples whose stack passes
through it (inclusive, so nested layers overlap: the middleware share contains everything
below it). py-spy is a dev tool: ``.venv/bin/pip install py-spy``.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

APP = ("fastapi/applications.py", "starlette/applications.py")
# (layer, substrings of a frame "function (path:line)": any counts the sample, unless one
# of the excluded ones is also on the stack).
LAYERS: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    ("uvicorn HTTP protocol outside the app (parse, write)", ("uvicorn/protocols/http",), APP),
    ("the ASGI app (everything below)", APP, ()),
    ("  our ASGI middlewares and what they call", ("service/http/middleware.py",), ()),
    (
        "  framework middlewares (errors, telemetry, body limit, exceptions)",
        (
            "starlette/middleware/",
            "fastapi/telemetry",
            "fastapi/_body_limit",
            "AsyncExitStackMiddleware",
        ),
        (),
    ),
    (
        "  FastAPI request handler (dependencies, body, endpoint, response)",
        ("fastapi/routing.py",),
        (),
    ),
    ("    dependency solving (solve_dependencies)", ("solve_dependencies",), ()),
    ("    body parsing and validation", ("_get_body", "request_body_to_args", "body()"), ()),
    ("    tenant auth (current_consumer, cache)", ("current_consumer",), ()),
    ("    rate limit (limiter + the RESP round trip)", ("enforce_rate_limit",), ()),
    ("      of which the RESP connection", ("service/ratelimit/resp.py",), ()),
    ("    endpoint: service + asyncpg statement", ("service/customers/",), ()),
    ("      of which asyncpg", ("asyncpg/",), ()),
    ("    envelope: model dump + JSON encoding", ("service/http/envelope.py",), ()),
    ("  metrics observe (prometheus-client)", ("service/http/metrics.py",), ()),
    ("event loop and other (no uvicorn/app frame)", (), ()),
]


def available() -> bool:
    return shutil.which("py-spy") is not None or Path(".venv/bin/py-spy").exists()


def py_spy() -> str:
    return shutil.which("py-spy") or str(Path(".venv/bin/py-spy").resolve())


@contextmanager
def recording(pid: int, output: Path, seconds: float) -> Iterator[None]:
    """py-spy records ``pid`` (and its children) for ``seconds`` while the body runs."""
    command = [
        py_spy(), "record", "--pid", str(pid), "--subprocesses", "--nonblocking",
        "--rate", "200", "--format", "raw", "--duration", str(max(1, round(seconds))),
        "--output", str(output),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        process.wait(seconds + 30)


def stacks(folded: Path) -> Iterator[tuple[str, int]]:
    """``(stack, samples)`` of each line of a collapsed-stack file."""
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            yield stack, int(count)


def summary(folded: Path) -> list[str]:
    """One line per layer: its inclusive share of the samples."""
    totals = dict.fromkeys((name for name, _, _ in LAYERS), 0)
    total = 0
    for stack, count in stacks(folded):
        total += count
        placed = False
        for name, needles, excluded in LAYERS[:-1]:
            if any(n in stack for n in needles) and not any(x in stack for x in excluded):
                totals[name] += count
                placed = placed or not name.startswith(" ")
        if not placed:
            totals[LAYERS[-1][0]] += count
    lines = [f"py-spy: {total} samples of the API server (active only), inclusive shares:"]
    lines += [f"  {share(totals[name], total):>6}  {name}" for name, _, _ in LAYERS]
    return lines


def share(part: int, total: int) -> str:
    return f"{part / total:.1%}" if total else "-"
