"""Where the ordered relay's wall time goes: one more drain under cProfile, by role.

``fintegrate bench relay --profile FILE`` runs it after the drain rounds (never inside
them: the profiler slows the relay down) and writes the pstats to FILE for
``python -m pstats FILE`` or snakeviz.
"""

from __future__ import annotations

import cProfile
import pstats
from collections.abc import Callable
from pathlib import Path

from service.bench.figures import Progress

# role -> the relay functions whose cumulative time it is
ROLES = {
    "database reads (heads, runs)": ("due_heads", "aggregate_runs"),
    "publishing + waiting for confirms": ("publish_batch",),
    "building messages (JSON, properties)": ("outgoing_event",),
    "recording outcomes (fenced)": ("_record",),
    "lease upkeep (join, rebalance)": ("_hold_partitions",),
}


def profiled(run: Callable[[], float], output: Path, progress: Progress) -> None:
    """Runs ``run`` (returning its wall seconds) under cProfile; the roles' shares."""
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        elapsed = run()
    finally:
        profiler.disable()
    profiler.dump_stats(output)
    progress(f"profile of one ordered drain ({elapsed:.2f} s wall), pstats in {output}:")
    for line in role_lines(pstats.Stats(str(output)), elapsed):
        progress(line)


def role_lines(stats: pstats.Stats, elapsed: float) -> list[str]:
    """One line per role: cumulative seconds of its functions and their share of the wall."""
    entries = stats.stats  # type: ignore[attr-defined]
    lines = []
    for role, names in ROLES.items():
        seconds = sum(
            cumulative
            for (_, _, function), (_, _, _, cumulative, _) in entries.items()
            if function in names
        )
        lines.append(f"  {role:40s} {seconds:6.2f} s  {100 * seconds / max(elapsed, 1e-9):5.1f} %")
    return lines
