"""``fintegrate events archive`` measured as the operator runs it: a child process.

Events/s with and without the CLI's start-up, and the child's own peak RSS (``wait4``,
not the largest of every child this process ever had).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass

from service.bench import stack
from service.bench.servers import BIN
from service.config import Settings

ARCHIVE_TARGET = 50_000  # events/s at least
RSS_TARGET_MB = 200.0


@dataclass(frozen=True)
class ArchiveFigures:
    """``fintegrate events archive`` on the loaded setup, as a child process."""

    archived_events: int
    seconds: float
    events_per_s: float  # archived_events / seconds, the CLI's start-up included
    events_per_s_in_process: float
    peak_rss_mb: float
    archive_bytes: int
    kept_not_final: int

    @property
    def met(self) -> bool:
        return self.events_per_s >= ARCHIVE_TARGET and self.peak_rss_mb <= RSS_TARGET_MB


def run_archive(settings: Settings, older_than: int) -> ArchiveFigures:
    """``fintegrate events archive`` as a child process: events/s and the child's peak RSS."""
    with (
        tempfile.TemporaryDirectory(prefix="bench_history_") as directory,
        tempfile.TemporaryFile() as out,
    ):
        command = [str(BIN / "fintegrate"), "events", "archive", "--older-than", str(older_than),
                   "--to", directory, "--yes", "--json"]  # fmt: skip
        started = time.perf_counter()
        child = subprocess.Popen(command, env=stack.process_env(settings), stdout=out)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            raise RuntimeError(f"events archive failed with exit code {child.returncode}")
        out.seek(0)
        result = json.loads(out.read())
    archived = int(result["archived_events"])
    return ArchiveFigures(
        archived,
        seconds,
        archived / seconds,
        archived / max(float(result["elapsed_seconds"]), 1e-9),
        usage.ru_maxrss / 1024,
        sum(int(f["bytes"]) for f in result["files"]),
        int(result["events_kept_not_final"]),
    )
